//! The writer thread: the only connection that writes the log, with group commit.
//!
//! It takes the first request off the queue, then everything else already waiting (up to
//! `max_commit_events`), and applies them all in one transaction: one fsync for the lot. Requests that arrive
//! while a commit runs wait in the queue and go into the next transaction. Each append is decided on its own
//! (a conflict fails that append only); each caller is answered after the transaction holding its events
//! committed and its index entries are in the `Tail`. If the transaction fails, every request in it fails
//! with [`Error::Unavailable`] and none of it is visible.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rusqlite::{Connection, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot, watch};
use weft_events::{Appended, Checkpoint, Error, ExpectedVersion, NewEvent, Snapshot, StreamName, Timestamp};

use super::index::{self, Tail};
use super::recent::Recent;
use super::{Counters, checkpoint_checksum, snapshot_checksum, sql_error, to_sql};
use crate::store::record;

/// What an append or snapshot asks of the writer.
pub(crate) enum Request {
    Append { stream: StreamName, expected: ExpectedVersion, events: Vec<NewEvent>, reply: Reply },
    Snapshot { snapshot: Snapshot, reply: Reply },
    Checkpoint { checkpoint: Checkpoint, reply: Reply },
    Close { reply: oneshot::Sender<()> },
}

/// What the writer answers.
pub(crate) enum Outcome {
    Appended(Appended),
    Saved,
}

pub(crate) type Reply = oneshot::Sender<Result<Outcome, Error>>;

pub(crate) struct Writer {
    pub(crate) conn: Connection,
    /// A connection to the index file, for the versions of streams that have left the tail. Used outside any
    /// transaction, so each lookup sees the indexer's latest commit.
    pub(crate) index: Connection,
    pub(crate) location: String,
    pub(crate) index_location: String,
    /// Position the next appended event gets.
    pub(crate) next_position: u64,
    pub(crate) head: watch::Sender<u64>,
    pub(crate) tail: Arc<Tail>,
    /// The events committed last, for the subscriptions at the head, and the versions of the streams
    /// appended to lately.
    pub(crate) recent: Arc<Recent>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) max_commit_events: usize,
    /// A second connection to the log, for the checkpointer thread the writer starts.
    pub(crate) checkpoints: Option<Connection>,
    /// The requests from a `Close` on, taken out of the batch they arrived in.
    pub(crate) closing: Vec<Request>,
}

/// How often the checkpointer folds the log's WAL into the file. The writer's own connection never
/// checkpoints (`wal_autocheckpoint = 0`): a checkpoint copies pages and fsyncs the file, and done inline it
/// would stall the group commit it happened to land in.
const CHECKPOINT_INTERVAL_MS: u64 = 100;

/// Runs passive checkpoints of the log until `stop` is dropped. Passive checkpoints never block the writer
/// or readers; they copy what they can.
fn checkpoint(conn: Connection, stop: std::sync::mpsc::Receiver<()>, location: String) {
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
        stop.recv_timeout(std::time::Duration::from_millis(CHECKPOINT_INTERVAL_MS))
    {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(store = %location, error = %e, "a checkpoint failed; the WAL grows until one succeeds");
        }
    }
}

/// The streams a transaction appends to: first new version and positions, for the tail.
type Pending = HashMap<StreamName, (u64, Vec<u64>)>;

impl Writer {
    pub(crate) fn run(mut self, mut queue: mpsc::Receiver<Request>) {
        let checkpointer = self.checkpoints.take().and_then(|conn| {
            let (stop, stopped) = std::sync::mpsc::channel();
            let location = self.location.clone();
            std::thread::Builder::new()
                .name("weft-store-checkpointer".into())
                .spawn(move || checkpoint(conn, stopped, location))
                .map_err(|e| tracing::warn!(error = %e, "no checkpointer thread; the writer checkpoints at close only"))
                .ok()
                .map(|thread| (stop, thread))
        });
        self.serve(&mut queue);
        if let Some((stop, thread)) = checkpointer {
            drop(stop);
            let _ = thread.join();
        }
        self.close(queue);
    }

    /// Serves requests until every handle has dropped or one asks to close.
    fn serve(&mut self, queue: &mut mpsc::Receiver<Request>) {
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
            let closing = batch.iter().position(|r| matches!(r, Request::Close { .. })).map(|at| batch.split_off(at));
            match self.tail.wait_for_room() {
                Ok(()) => self.commit(&mut batch),
                Err(reason) => fail(&mut batch, Error::Unavailable { location: self.index_location.clone(), reason }),
            }
            if let Some(rest) = closing {
                self.closing = rest;
                return;
            }
        }
        tracing::debug!(store = %self.location, "every handle dropped; the writer stops");
    }

    /// Refuses what is still queued, stops the indexer, folds the WAL into the file and closes the
    /// connection; then answers whoever asked to close.
    fn close(mut self, mut queue: mpsc::Receiver<Request>) {
        queue.close();
        let mut replies = Vec::new();
        let rest = std::mem::take(&mut self.closing);
        for request in rest.into_iter().chain(std::iter::from_fn(|| queue.try_recv().ok())) {
            match request {
                Request::Close { reply } => replies.push(reply),
                Request::Append { reply, .. } | Request::Snapshot { reply, .. } | Request::Checkpoint { reply, .. } => {
                    let _ = reply.send(Err(Error::Closed));
                }
            }
        }
        self.tail.close();
        if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
            tracing::warn!(store = %self.location, error = %e, "checkpoint at close failed");
        }
        if let Err((_, e)) = self.conn.close() {
            tracing::warn!(store = %self.location, error = %e, "closing the write connection failed");
        }
        for reply in replies {
            let _ = reply.send(());
        }
    }

    /// Applies a batch of requests in one transaction and answers each.
    fn commit(&mut self, batch: &mut Vec<Request>) {
        let recorded_at = Timestamp::now();
        let mut next_position = self.next_position;
        let mut answers: Vec<(Reply, Result<Outcome, Error>)> = Vec::with_capacity(batch.len());
        let mut pending = Pending::new();
        let mut committed = Vec::new();
        let versions = Versions {
            cache: &self.recent,
            tail: &self.tail,
            index: &self.index,
            index_location: &self.index_location,
        };
        let started = std::time::Instant::now();
        let result = (|| -> rusqlite::Result<()> {
            let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut record = Vec::with_capacity(256);
            for request in batch.drain(..) {
                match request {
                    Request::Append { stream, expected, events, reply } => {
                        let outcome = append(
                            &tx,
                            &versions,
                            &mut pending,
                            (&stream, expected, events),
                            &mut next_position,
                            recorded_at,
                            (&mut record, &mut committed),
                        )?;
                        answers.push((reply, outcome));
                    }
                    Request::Snapshot { snapshot, reply } => {
                        answers.push((reply, save_snapshot(&tx, &versions, &pending, snapshot)?));
                    }
                    Request::Checkpoint { checkpoint, reply } => {
                        answers.push((reply, save_checkpoint(&tx, next_position - 1, checkpoint)?));
                    }
                    Request::Close { .. } => unreachable!("run splits the batch at Close"),
                }
            }
            tx.commit()
        })();
        match result {
            Ok(()) => {
                let events = next_position - self.next_position;
                self.next_position = next_position;
                let appends = answers.iter().filter(|(_, o)| matches!(o, Ok(Outcome::Appended(_)))).count();
                self.counters.commits.fetch_add(1, Ordering::Relaxed);
                self.counters.appends.fetch_add(appends as u64, Ordering::Relaxed);
                self.counters.events.fetch_add(events, Ordering::Relaxed);
                crate::store::committed(appends, events as usize, started.elapsed());
                // Readers find streams through the tail, so it learns of the events before anyone is told.
                self.tail
                    .add(pending.into_iter().map(|(stream, (first, positions))| (stream, first, positions)).collect());
                self.recent.add(committed);
                self.head.send_replace(next_position - 1);
                for (reply, outcome) in answers {
                    let _ = reply.send(outcome);
                }
            }
            Err(e) => {
                let error = sql_error(&self.location, e);
                tracing::error!(store = %self.location, %error, "a group commit failed; its appends fail");
                // The transaction rolled back; re-read where the log ends in case the failure was in the
                // commit itself.
                if let Ok(head) =
                    self.conn.query_row("SELECT coalesce(max(position), 0) FROM events", [], |r| r.get::<_, i64>(0))
                {
                    self.next_position = super::from_sql(head) + 1;
                }
                for (reply, _) in answers {
                    let _ = reply.send(Err(error.clone()));
                }
                fail(batch, error);
            }
        }
    }
}

/// Answers every request left in `batch` with `error`.
fn fail(batch: &mut Vec<Request>, error: Error) {
    for request in batch.drain(..) {
        match request {
            Request::Append { reply, .. } | Request::Snapshot { reply, .. } | Request::Checkpoint { reply, .. } => {
                let _ = reply.send(Err(error.clone()));
            }
            Request::Close { .. } => unreachable!("run splits the batch at Close"),
        }
    }
}

fn request_events(request: &Request) -> usize {
    match request {
        Request::Append { events, .. } => events.len(),
        Request::Snapshot { .. } | Request::Checkpoint { .. } | Request::Close { .. } => 1,
    }
}

/// Where the writer finds a stream's current version: this transaction's appends, then its cache of
/// committed versions, then the tail, then the index file.
struct Versions<'a> {
    cache: &'a Recent,
    tail: &'a Tail,
    index: &'a Connection,
    index_location: &'a str,
}

impl Versions<'_> {
    fn get(&self, pending: &Pending, stream: &StreamName) -> Result<u64, Error> {
        if let Some((first, positions)) = pending.get(stream) {
            return Ok(first + positions.len() as u64 - 1);
        }
        if let Some(version) = self.cache.last_version(stream) {
            return Ok(version);
        }
        // Entries leave the tail only after the index file holds them, so a stream missing from the tail is
        // complete in the file.
        if let Some(version) = self.tail.last_version(stream) {
            return Ok(version);
        }
        index::file_version(self.index, self.index_location, "", stream)
    }
}

/// Applies one append inside the writer's transaction. The outer error aborts the whole transaction; the
/// inner one fails this append only.
fn append(
    tx: &rusqlite::Transaction<'_>,
    versions: &Versions<'_>,
    pending: &mut Pending,
    (stream, expected, events): (&StreamName, ExpectedVersion, Vec<NewEvent>),
    next_position: &mut u64,
    recorded_at: Timestamp,
    (record, committed): (&mut Vec<u8>, &mut Vec<weft_events::Envelope>),
) -> rusqlite::Result<Result<Outcome, Error>> {
    let actual = match versions.get(pending, stream) {
        Ok(version) => version,
        Err(error) => return Ok(Err(error)),
    };
    if !expected.matches(actual) {
        return Ok(Err(Error::Conflict { stream: stream.clone(), expected, actual }));
    }
    let first_position = *next_position;
    let mut insert =
        tx.prepare_cached("INSERT INTO events (position, stream, version, record) VALUES (?1, ?2, ?3, ?4)")?;
    let mut version = actual;
    let mut positions = Vec::with_capacity(events.len());
    for event in events {
        version += 1;
        record::encode(record, &event, stream, version, *next_position, recorded_at);
        insert.execute(params![to_sql(*next_position), stream.as_str(), to_sql(version), record.as_slice()])?;
        positions.push(*next_position);
        committed.push(event.into_envelope(stream.clone(), version, *next_position, recorded_at));
        *next_position += 1;
    }
    match pending.entry(stream.clone()) {
        Entry::Occupied(mut entry) => entry.get_mut().1.extend(positions),
        Entry::Vacant(entry) => {
            entry.insert((actual + 1, positions));
        }
    }
    Ok(Ok(Outcome::Appended(Appended { version, first_position, last_position: *next_position - 1 })))
}

fn save_checkpoint(
    tx: &rusqlite::Transaction<'_>,
    head: u64,
    checkpoint: Checkpoint,
) -> rusqlite::Result<Result<Outcome, Error>> {
    if checkpoint.position > head {
        return Ok(Err(Error::CheckpointAhead { name: checkpoint.name, position: checkpoint.position, head }));
    }
    tx.prepare_cached(
        "INSERT INTO checkpoints (name, position, state, checksum) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (name) DO UPDATE SET position = excluded.position, state = excluded.state, \
         checksum = excluded.checksum WHERE excluded.position >= checkpoints.position",
    )?
    .execute(params![
        checkpoint.name.as_str(),
        to_sql(checkpoint.position),
        checkpoint.state.as_ref(),
        i64::from(checkpoint_checksum(&checkpoint)),
    ])?;
    Ok(Ok(Outcome::Saved))
}

fn save_snapshot(
    tx: &rusqlite::Transaction<'_>,
    versions: &Versions<'_>,
    pending: &Pending,
    snapshot: Snapshot,
) -> rusqlite::Result<Result<Outcome, Error>> {
    let actual = match versions.get(pending, &snapshot.stream) {
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
