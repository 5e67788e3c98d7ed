//! Runs a projection: subscribe-all from its saved position, each batch applied and the position saved in
//! one SQLite transaction.
//!
//! The runner owns its SQLite connection on a thread of its own (SQLite is blocking), and drives the
//! subscription on the tokio runtime it was started from. Its position is published on a `watch` channel,
//! so that the lag (the store's head less the position) can be read at any time, and a query can wait until
//! the projection has reached a position.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{oneshot, watch};
use weft_events::{EventRead, Subscription};

use crate::{ApplyError, Projection};

/// Why a projection could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The read-model database could not be opened or set up.
    #[error("read models {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// An event could not be applied; the projection stopped at the batch before it.
    #[error("projection {name}: {source}")]
    Apply {
        /// The projection.
        name: &'static str,
        /// Why.
        source: ApplyError,
    },
    /// The projection's thread could not be started.
    #[error("projection {name}: cannot start its thread: {source}")]
    Thread {
        /// The projection.
        name: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The store failed.
    #[error("projection {name}: reading the log: {source}")]
    Store {
        /// The projection.
        name: &'static str,
        /// Why.
        source: weft_events::Error,
    },
}

/// A running projection.
pub struct Running {
    name: &'static str,
    position: watch::Receiver<u64>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), Error>>>,
}

impl Running {
    /// The projection's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The position of the last event applied (and committed).
    pub fn position(&self) -> u64 {
        *self.position.borrow()
    }

    /// A receiver of the position, for those that wait on it (read-your-writes) or report it (lag).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.position.clone()
    }

    /// Waits until the projection has applied everything up to `position` (or stopped: then `false`).
    pub async fn reached(&self, position: u64) -> bool {
        let mut watch = self.position.clone();
        watch.wait_for(|p| *p >= position).await.is_ok()
    }

    /// Stops after the batch being applied and returns how the projection ended.
    pub fn stop(mut self) -> Result<(), Error> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread.join().unwrap_or_else(|_| Ok(())),
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Opens (or creates) the read-model database at `path` for `projection`, and starts applying the log from
/// the position saved there. Must be called within a tokio runtime.
pub fn start<P: Projection>(projection: P, path: &Path, store: Arc<dyn EventRead>) -> Result<Running, Error> {
    let open_error = |source| Error::Open { path: path.to_owned(), source };
    let db = Connection::open(path).map_err(open_error)?;
    // WAL: readers (the query API) never wait for the projection. NORMAL: a power loss may undo the last
    // batches, model and position together, which are then applied again.
    db.pragma_update(None, "journal_mode", "WAL").map_err(open_error)?;
    db.pragma_update(None, "synchronous", "NORMAL").map_err(open_error)?;
    // Several projections may share one file: each waits its turn to write.
    db.busy_timeout(std::time::Duration::from_secs(30)).map_err(open_error)?;
    db.set_prepared_statement_cache_capacity(64);
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS projection_positions (name TEXT PRIMARY KEY, position INTEGER NOT NULL)",
    )
    .map_err(open_error)?;
    projection.create(&db).map_err(open_error)?;
    let name = projection.name();
    let saved: u64 = db
        .query_row("SELECT position FROM projection_positions WHERE name = ?1", [name], |row| row.get::<_, i64>(0))
        .optional()
        .map_err(open_error)?
        .map_or(0, |p| p as u64);

    let (position_tx, position) = watch::channel(saved);
    let (stop, stopped) = oneshot::channel();
    let subscription = store.subscribe_all(saved + 1);
    let runtime = tokio::runtime::Handle::current();
    let thread = std::thread::Builder::new()
        .name(format!("projection-{name}"))
        .spawn(move || apply_loop(projection, db, subscription, runtime, stopped, position_tx))
        .map_err(|source| Error::Thread { name, source })?;
    Ok(Running { name, position, stop: Some(stop), thread: Some(thread) })
}

fn apply_loop<P: Projection>(
    mut projection: P,
    mut db: Connection,
    mut subscription: Subscription,
    runtime: tokio::runtime::Handle,
    mut stopped: oneshot::Receiver<()>,
    position: watch::Sender<u64>,
) -> Result<(), Error> {
    let name = projection.name();
    loop {
        // The subscription is dropped with this loop on stop, so cancelling its read is fine.
        let batch = runtime.block_on(async {
            tokio::select! {
                _ = &mut stopped => None,
                batch = subscription.next_batch() => Some(batch),
            }
        });
        let Some(batch) = batch else { return Ok(()) };
        let batch = batch.map_err(|source| Error::Store { name, source })?;
        let Some(last) = batch.last().map(|e| e.position) else { continue };
        let mut apply = |db: &mut Connection| -> Result<(), ApplyError> {
            let tx = db.transaction()?;
            for event in &batch {
                projection.apply(&tx, event)?;
            }
            tx.execute(
                "INSERT INTO projection_positions (name, position) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                params![name, last as i64],
            )?;
            tx.commit()?;
            Ok(())
        };
        if let Err(source) = apply(&mut db) {
            tracing::error!(projection = name, error = %source, "a projection stopped");
            return Err(Error::Apply { name, source });
        }
        position.send_replace(last);
    }
}
