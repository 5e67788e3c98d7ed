//! A read-only view of a store's files, for the operator's tools (`weft events`): it reads while a node has
//! the store open, and never takes the store's lock, writes, checkpoints or indexes.
//!
//! It reads the log like the store's own readers (same checks: every record's checksum, dense positions and
//! versions) and finds a stream's events through the index file for the part the index holds
//! (`indexed_through`) and by a scan of the log after it: the node's indexer may lag, or the node may have
//! been killed before it caught up, and the view must not depend on either. Without an index file at all a
//! stream read scans the whole log: slower, still right.
//!
//! Its head is the log's last position, polled every [`HEAD_POLL_MS`] while a subscription follows it (the
//! node that writes is another process: there is nothing to be woken by).

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::watch;
use weft_events::{Checkpoint, Direction, Envelope, Error, EventRead, Limits, Snapshot, StreamName, Subscription};

use super::files::{check_header, index_path};
use super::read::{decode_row, load_checkpoint, load_snapshot, select_all};
use super::{BUSY_TIMEOUT_MS, corrupt, from_sql, sql_error, to_sql};
use crate::store::record;

/// How often a following view looks for new events.
pub const HEAD_POLL_MS: u64 = 50;

/// A read-only view of the store at a path. Cheap to clone.
#[derive(Clone)]
pub struct View {
    shared: Arc<Shared>,
}

struct Shared {
    location: String,
    /// One connection: the tools read one thing at a time.
    conn: Mutex<Connection>,
    /// Whether the index file is attached as `idx`.
    indexed: bool,
    limits: Limits,
    head: watch::Sender<u64>,
}

impl View {
    /// Opens the store at `path` for reading. A missing file is an error (a view never creates a store).
    pub fn open(path: &Path) -> Result<Self, Error> {
        let location = path.display().to_string();
        if !path.is_file() {
            return Err(Error::Unavailable { location, reason: "no such store file".into() });
        }
        check_header(path, &location)?;
        // Read-write flags with `query_only`, as the store's own readers: a read-only open of a WAL file fails
        // when its shared-memory file is missing (a stopped node), and `query_only` refuses every write.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| sql_error(&location, e))?;
        conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS)).map_err(|e| sql_error(&location, e))?;
        super::stable_plans(&conn).map_err(|e| sql_error(&location, e))?;
        let index = index_path(path);
        let indexed = index.is_file();
        if indexed {
            let name = index.to_str().ok_or_else(|| Error::Unavailable {
                location: location.clone(),
                reason: "the index file's path is not UTF-8".into(),
            })?;
            conn.execute("ATTACH DATABASE ?1 AS idx", [name]).map_err(|e| sql_error(&location, e))?;
        }
        conn.execute_batch("PRAGMA query_only = ON; PRAGMA cell_size_check = ON;")
            .map_err(|e| sql_error(&location, e))?;
        super::check_schema(&conn, super::SCHEMA).map_err(|detail| corrupt(&location, detail))?;
        let head = last_position(&conn, &location)?;
        Ok(Self {
            shared: Arc::new(Shared {
                location,
                conn: Mutex::new(conn),
                indexed,
                limits: Limits::default(),
                head: watch::channel(head).0,
            }),
        })
    }

    /// The log file, as given.
    pub fn location(&self) -> &str {
        &self.shared.location
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &Shared) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let conn = shared.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&conn, &shared)
        })
        .await
        .unwrap_or_else(|e| {
            Err(Error::Unavailable { location: self.shared.location.clone(), reason: format!("a read failed: {e}") })
        })
    }
}

fn last_position(conn: &Connection, location: &str) -> Result<u64, Error> {
    conn.query_row("SELECT max(position) FROM events", [], |r| r.get::<_, Option<i64>>(0))
        .map(|p| p.map_or(0, from_sql))
        .map_err(|e| sql_error(location, e))
}

/// Where each version of `stream` is: `(version, position)` in version order, from the index file through
/// its `indexed_through` and from a scan of the log after it. Only versions in `low..=high` are listed.
fn locate(
    conn: &Connection,
    shared: &Shared,
    stream: &StreamName,
    low: u64,
    high: u64,
) -> Result<Vec<(u64, u64)>, Error> {
    let location = shared.location.as_str();
    let mut found = Vec::new();
    let mut through = 0;
    if shared.indexed {
        through = indexed_through(conn, location)?;
        let mut select = conn
            .prepare_cached(
                "SELECT version, position FROM idx.stream_events WHERE stream = ?1 AND version BETWEEN ?2 AND ?3 \
                 AND position <= ?4 ORDER BY version",
            )
            .map_err(|e| sql_error(location, e))?;
        let rows = select
            .query_map(params![stream.as_str(), to_sql(low), to_sql(high), to_sql(through)], |r| {
                Ok((from_sql(r.get(0)?), from_sql(r.get(1)?)))
            })
            .map_err(|e| sql_error(location, e))?;
        for row in rows {
            found.push(row.map_err(|e| sql_error(location, e))?);
        }
    }
    let mut select = conn
        .prepare_cached(
            "SELECT version, position FROM events WHERE position > ?1 AND stream = ?2 AND version BETWEEN ?3 AND ?4 \
             ORDER BY position",
        )
        .map_err(|e| sql_error(location, e))?;
    let rows = select
        .query_map(params![to_sql(through), stream.as_str(), to_sql(low), to_sql(high)], |r| {
            Ok((from_sql(r.get(0)?), from_sql(r.get(1)?)))
        })
        .map_err(|e| sql_error(location, e))?;
    for row in rows {
        found.push(row.map_err(|e| sql_error(location, e))?);
    }
    Ok(found)
}

fn read_stream(
    conn: &Connection,
    shared: &Shared,
    stream: &StreamName,
    from: u64,
    direction: Direction,
    limit: usize,
) -> Result<Vec<Envelope>, Error> {
    let location = shared.location.as_str();
    let tx = conn.unchecked_transaction().map_err(|e| sql_error(location, e))?;
    let (low, high) = match direction {
        Direction::Forwards => (from.max(1), from.max(1).saturating_add(limit as u64 - 1)),
        Direction::Backwards => {
            let high = from.min(stream_version(&tx, shared, stream)?);
            (high.saturating_sub(limit as u64 - 1).max(1), high)
        }
    };
    if low > high {
        return Ok(Vec::new());
    }
    let mut select = tx
        .prepare_cached("SELECT position, stream, version, record FROM events WHERE position = ?1")
        .map_err(|e| sql_error(location, e))?;
    let mut names = record::Names::default();
    let mut events = Vec::new();
    for (version, position) in locate(&tx, shared, stream, low, high)? {
        let event = select
            .query_row([to_sql(position)], |row| Ok(decode_row(row, location, &mut names)))
            .optional()
            .map_err(|e| sql_error(location, e))?
            .ok_or_else(|| {
                corrupt(location, format!("{stream} version {version} is missing from position {position}"))
            })??;
        events.push(event);
    }
    let dense = events.iter().zip(low..).all(|(e, v)| e.version == v && &e.stream == stream);
    if !dense {
        return Err(corrupt(
            location,
            format!(
                "stream {stream} versions from {low} were asked for, the log holds {:?}",
                events.iter().map(|e| e.version).collect::<Vec<_>>()
            ),
        ));
    }
    if direction == Direction::Backwards {
        events.reverse();
    }
    Ok(events)
}

/// How far the index file has got: it holds the streams of the positions up to this.
fn indexed_through(conn: &Connection, location: &str) -> Result<u64, Error> {
    Ok(conn
        .query_row("SELECT indexed_through FROM idx.progress WHERE id = 1", [], |r| r.get::<_, i64>(0))
        .optional()
        .map_err(|e| sql_error(location, e))?
        .map_or(0, from_sql))
}

fn stream_version(conn: &Connection, shared: &Shared, stream: &StreamName) -> Result<u64, Error> {
    let location = shared.location.as_str();
    let mut last = 0;
    let mut through = 0;
    if shared.indexed {
        through = indexed_through(conn, location)?;
        last = conn
            .prepare_cached("SELECT max(version) FROM idx.stream_events WHERE stream = ?1 AND position <= ?2")
            .and_then(|mut s| s.query_row(params![stream.as_str(), to_sql(through)], |r| r.get::<_, Option<i64>>(0)))
            .map_err(|e| sql_error(location, e))?
            .map_or(0, from_sql);
    }
    let after = conn
        .prepare_cached("SELECT max(version) FROM events WHERE position > ?1 AND stream = ?2")
        .and_then(|mut s| s.query_row(params![to_sql(through), stream.as_str()], |r| r.get::<_, Option<i64>>(0)))
        .map_err(|e| sql_error(location, e))?
        .map_or(0, from_sql);
    Ok(last.max(after))
}

#[async_trait]
impl EventRead for View {
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
        self.run(move |conn, shared| read_stream(conn, shared, &stream, from, direction, limit)).await
    }

    async fn read_all(&self, from: u64, limit: usize) -> Result<Vec<Envelope>, Error> {
        self.shared.limits.check_page(limit)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.run(move |conn, shared| select_all(conn, &shared.location, from.max(1), limit)).await
    }

    async fn stream_version(&self, stream: &StreamName) -> Result<u64, Error> {
        let stream = stream.clone();
        self.run(move |conn, shared| {
            let _snapshot = conn.unchecked_transaction().map_err(|e| sql_error(&shared.location, e))?;
            stream_version(conn, shared, &stream)
        })
        .await
    }

    async fn head(&self) -> Result<u64, Error> {
        let head = self.run(|conn, shared| last_position(conn, &shared.location)).await?;
        self.shared.head.send_if_modified(|h| std::mem::replace(h, head) != head);
        Ok(head)
    }

    async fn load_snapshot(&self, stream: &StreamName) -> Result<Option<Snapshot>, Error> {
        let stream = stream.clone();
        self.run(move |conn, shared| load_snapshot(conn, &shared.location, stream)).await
    }

    async fn load_checkpoint(&self, name: &StreamName) -> Result<Option<Checkpoint>, Error> {
        let name = name.clone();
        self.run(move |conn, shared| load_checkpoint(conn, &shared.location, name)).await
    }

    async fn checkpoint_names(&self) -> Result<Vec<StreamName>, Error> {
        self.run(|conn, shared| super::read::checkpoint_names(conn, &shared.location)).await
    }

    /// Must be called within a tokio runtime: a task polls the head while the subscription lives.
    fn subscribe_all(&self, from: u64) -> Subscription {
        let head = self.shared.head.subscribe();
        let view = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(HEAD_POLL_MS));
            // Stops once every subscription is gone.
            while view.shared.head.receiver_count() > 0 {
                tick.tick().await;
                if view.head().await.is_err() {
                    break;
                }
            }
        });
        Subscription::new(Arc::new(self.clone()), head, from)
    }

    fn limits(&self) -> Limits {
        self.shared.limits
    }
}
