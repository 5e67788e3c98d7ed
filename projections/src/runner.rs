//! Runs a projection: subscribe-all from its saved position, each batch applied and the position saved in
//! one SQLite transaction.
//!
//! The runner owns its SQLite connection on a thread of its own (SQLite is blocking), and drives the
//! subscription on the tokio runtime it was started from. Its position is published on a `watch` channel,
//! so that the lag (the store's head less the position) can be read at any time, and a query can wait until
//! the projection has reached a position.
//!
//! A runner never ends on a failure: a log it cannot read now (the store unavailable, a read timed out) is
//! read again from the same position, and a batch that did not apply (the disk full, a bug) is applied again,
//! each after a wait that doubles up to [`MAX_RETRY_DELAY`]; its [`Health`] says so meanwhile, for the node's
//! `/readyz`. Only a stop, or a store that closes or hands back a gap, ends it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{oneshot, watch};
use weft_events::{EventRead, Health, Subscription};

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
    /// A rebuild's projection stopped before it caught up.
    #[error("projection {name}: the rebuild stopped before it caught up")]
    Stopped {
        /// The projection.
        name: &'static str,
    },
    /// No projection of this crate has that name.
    #[error("no projection is named {name:?}")]
    Unknown {
        /// The name.
        name: &'static str,
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

/// The first wait before a failed read or apply is tried again.
const MIN_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

/// The longest wait between tries of a failed read or apply.
pub const MAX_RETRY_DELAY: std::time::Duration = std::time::Duration::from_secs(5);

/// A running projection.
pub struct Running {
    name: &'static str,
    path: PathBuf,
    store: Arc<dyn EventRead>,
    /// Kept across a [`rebuild`], so that those watching the position keep watching the one that serves.
    position_tx: Arc<watch::Sender<u64>>,
    /// Kept across a [`rebuild`] too.
    health: Health,
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

    /// How it is doing.
    pub fn health(&self) -> Health {
        self.health.clone()
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
    start_with(projection, path, store, None, None)
}

fn open(path: &Path) -> Result<Connection, Error> {
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
    Ok(db)
}

fn start_with<P: Projection>(
    projection: P,
    path: &Path,
    store: Arc<dyn EventRead>,
    position_tx: Option<Arc<watch::Sender<u64>>>,
    health: Option<Health>,
) -> Result<Running, Error> {
    let open_error = |source| Error::Open { path: path.to_owned(), source };
    let db = open(path)?;
    projection.create(&db).map_err(open_error)?;
    let name = projection.name();
    let saved: u64 = db
        .query_row("SELECT position FROM projection_positions WHERE name = ?1", [name], |row| row.get::<_, i64>(0))
        .optional()
        .map_err(open_error)?
        .map_or(0, |p| p as u64);

    let position_tx = position_tx.unwrap_or_else(|| Arc::new(watch::channel(saved).0));
    position_tx.send_replace(saved);
    let position = position_tx.subscribe();
    let (stop, stopped) = oneshot::channel();
    let subscription = store.subscribe_all(saved + 1);
    let runtime = tokio::runtime::Handle::current();
    let sender = position_tx.clone();
    let thread_path = path.to_owned();
    let health = health.unwrap_or_default();
    let reporting = health.clone();
    let thread = std::thread::Builder::new()
        .name(format!("projection-{name}"))
        .spawn(move || {
            let result = apply_loop(projection, db, subscription, runtime, stopped, &sender, thread_path, &reporting);
            reporting.stopped();
            result
        })
        .map_err(|source| Error::Thread { name, source })?;
    Ok(Running {
        name,
        path: path.to_owned(),
        store,
        position_tx,
        health,
        position,
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// Rebuilds `live`'s read model from position 0 and swaps it in, while `live` keeps serving until the swap.
///
/// 1. A fresh projection applies the whole log into a scratch file beside the read models
///    (`<file>.rebuild-<name>`) until it has caught up with the store's head.
/// 2. `live` stops (at position L); the fresh one goes on until it has applied L, then stops (at R ≥ L).
/// 3. One transaction on the read models drops `live`'s tables, creates them anew (so a changed schema is
///    taken up), copies the rebuilt rows in and saves R as the position. Readers see the old model until it
///    commits and the new one after: never a mix, never an empty table.
/// 4. `live` starts again from R, on the same position watch, and the scratch file is removed.
///
/// Returns R. If a step fails before the swap commits, the old model is left as it was and `live` is
/// restarted from its own position.
pub async fn rebuild<P: Projection + Default>(live: &mut Running) -> Result<u64, Error> {
    rebuild_watched::<P>(live, |_, _| {}).await
}

/// [`rebuild`], telling `on_start` where to watch its progress.
pub async fn rebuild_watched<P: Projection + Default>(
    live: &mut Running,
    on_start: impl FnOnce(watch::Receiver<u64>, u64) + Send,
) -> Result<u64, Error> {
    let name = live.name;
    let scratch = scratch_path(&live.path, name);
    remove_scratch(&scratch);
    let result = rebuild_into::<P>(live, &scratch, on_start).await;
    remove_scratch(&scratch);
    if live.thread.is_none() {
        *live = start_again::<P>(live)?;
    }
    result
}

async fn rebuild_into<P: Projection + Default>(
    live: &mut Running,
    scratch: &Path,
    on_start: impl FnOnce(watch::Receiver<u64>, u64),
) -> Result<u64, Error> {
    let name = live.name;
    let fresh = start(P::default(), scratch, live.store.clone())?;
    let head = live.store.head().await.map_err(|source| Error::Store { name, source })?;
    on_start(fresh.watch(), head);
    if !fresh.reached(head).await {
        fresh.stop()?;
        return Err(Error::Stopped { name });
    }
    if let Err(e) = live.finish() {
        // A projection that stopped on an event is what a rebuild (with the fix) is for: go on.
        tracing::warn!(projection = name, error = %e, "the live projection had stopped; rebuilding regardless");
    }
    let live_position = live.position();
    if !fresh.reached(live_position).await {
        fresh.stop()?;
        return Err(Error::Stopped { name });
    }
    // The position once it has stopped: it may commit one more batch between a read of its position and the
    // stop, and the rows swapped in must be those of the position saved with them.
    let stopped = fresh.watch();
    fresh.stop()?;
    let rebuilt = *stopped.borrow();
    let (path, scratch) = (live.path.clone(), scratch.to_owned());
    tokio::task::spawn_blocking(move || swap(P::default(), &path, &scratch, rebuilt))
        .await
        .map_err(|e| Error::Thread { name, source: std::io::Error::other(e.to_string()) })??;
    live.position_tx.send_replace(rebuilt);
    Ok(rebuilt)
}

/// Empties `live`'s read model and has it apply the log again from position 0, in place: unlike [`rebuild`],
/// its reads see the model fill up meanwhile (reads with `after=` wait for it), and no second copy is made.
/// For a model too large to copy, or one whose old rows must not be served.
pub async fn reset<P: Projection + Default>(live: &mut Running) -> Result<(), Error> {
    let name = live.name;
    if let Err(e) = live.finish() {
        tracing::warn!(projection = name, error = %e, "the live projection had stopped; resetting regardless");
    }
    let (path, scratch) = (live.path.clone(), scratch_path(&live.path, name));
    let emptied = tokio::task::spawn_blocking(move || {
        remove_scratch(&scratch);
        let result = (|| {
            let db = open(&scratch)?;
            P::default().create(&db).map_err(|source| Error::Open { path: scratch.clone(), source })?;
            drop(db);
            swap(P::default(), &path, &scratch, 0)
        })();
        remove_scratch(&scratch);
        result
    })
    .await
    .map_err(|e| Error::Thread { name, source: std::io::Error::other(e.to_string()) })?;
    // Whether or not it was emptied, the projection runs again (from 0, or from where it was).
    *live = start_again::<P>(live)?;
    emptied
}

/// A stopped projection started again from its saved position, on the same position watch and health.
fn start_again<P: Projection + Default>(live: &Running) -> Result<Running, Error> {
    start_with(P::default(), &live.path, live.store.clone(), Some(live.position_tx.clone()), Some(live.health.clone()))
}

/// Replaces `projection`'s tables in `path` by those in `scratch`, with `position`, in one transaction.
fn swap<P: Projection>(projection: P, path: &Path, scratch: &Path, position: u64) -> Result<(), Error> {
    let name = projection.name();
    let open_error = |source| Error::Open { path: path.to_owned(), source };
    let mut db = open(path)?;
    db.execute("ATTACH DATABASE ?1 AS fresh", [scratch.to_string_lossy()]).map_err(open_error)?;
    let writer = writer_lock(path);
    let _turn = writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(open_error)?;
    for table in projection.tables() {
        tx.execute_batch(&format!("DROP TABLE IF EXISTS main.{table}")).map_err(open_error)?;
    }
    projection.create(&tx).map_err(open_error)?;
    for table in projection.tables() {
        tx.execute_batch(&format!("INSERT INTO main.{table} SELECT * FROM fresh.{table}")).map_err(open_error)?;
    }
    tx.execute(
        "INSERT INTO main.projection_positions (name, position) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET position = excluded.position",
        params![name, position as i64],
    )
    .map_err(open_error)?;
    tx.commit().map_err(open_error)?;
    db.execute("DETACH DATABASE fresh", []).map_err(open_error)?;
    Ok(())
}

/// The in-process lock of the projections writing to `path` (one per file, shared by its runners).
fn writer_lock(path: &Path) -> Arc<std::sync::Mutex<()>> {
    static LOCKS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<PathBuf, Arc<std::sync::Mutex<()>>>>> =
        std::sync::LazyLock::new(Default::default);
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let mut locks = LOCKS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    locks.entry(key).or_default().clone()
}

fn scratch_path(path: &Path, name: &str) -> PathBuf {
    let mut file = path.as_os_str().to_owned();
    file.push(format!(".rebuild-{name}"));
    PathBuf::from(file)
}

fn remove_scratch(scratch: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut file = scratch.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(file));
    }
}

/// Waits `delay` (then doubles it up to [`MAX_RETRY_DELAY`]); false when a stop came meanwhile.
fn wait_to_retry(
    runtime: &tokio::runtime::Handle,
    stopped: &mut oneshot::Receiver<()>,
    delay: &mut std::time::Duration,
) -> bool {
    let wait = *delay;
    *delay = (*delay * 2).min(MAX_RETRY_DELAY);
    runtime.block_on(async {
        tokio::select! {
            _ = stopped => false,
            _ = tokio::time::sleep(wait) => true,
        }
    })
}

/// How long a projection waits after batches it passed over before it saves their position (unless a batch
/// it applies saves it first).
const SAVE_WHEN_IDLE: std::time::Duration = std::time::Duration::from_millis(200);

/// Saves `position` as `name`'s after batches passed over (best effort: a projection that does not save it
/// reads those batches again after a restart, and passes them over again).
fn save_position(db: &mut Connection, writer: &std::sync::Mutex<()>, name: &str, position: u64) {
    let _turn = writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let saved = db.execute(
        "INSERT INTO projection_positions (name, position) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET position = excluded.position
         WHERE excluded.position > projection_positions.position",
        params![name, position as i64],
    );
    if let Err(error) = saved {
        tracing::warn!(projection = name, %error, "a passed-over position was not saved; a restart reads on from an earlier one");
    }
}

#[allow(clippy::too_many_arguments)]
fn apply_loop<P: Projection>(
    mut projection: P,
    mut db: Connection,
    mut subscription: Subscription,
    runtime: tokio::runtime::Handle,
    mut stopped: oneshot::Receiver<()>,
    position: &watch::Sender<u64>,
    path: PathBuf,
    health: &Health,
) -> Result<(), Error> {
    let name = projection.name();
    let writer = writer_lock(&path);
    health.running();
    let mut delay = MIN_RETRY_DELAY;
    // The position past the last batch passed over, not saved yet.
    let mut unsaved = None;
    loop {
        // `next_batch` is cancel-safe: a read cut short by the idle save is taken up again.
        let batch = runtime.block_on(async {
            tokio::select! {
                _ = &mut stopped => None,
                batch = subscription.next_batch() => Some(Some(batch)),
                () = tokio::time::sleep(SAVE_WHEN_IDLE), if unsaved.is_some() => Some(None),
            }
        });
        let Some(Some(batch)) = batch else {
            // Idle (or stopping) after batches passed over: their position is saved now.
            if let Some(last) = unsaved.take() {
                save_position(&mut db, &writer, name, last);
            }
            if batch.is_none() {
                return Ok(());
            }
            continue;
        };
        let batch = match batch {
            Ok(batch) => batch,
            Err(source) if source.is_retryable() => {
                // The subscription keeps its place: the next read starts where this one failed.
                tracing::warn!(projection = name, error = %source, "reading the log failed; trying again");
                health.retrying(format!("reading the log after position {}: {source}", *position.borrow()));
                if !wait_to_retry(&runtime, &mut stopped, &mut delay) {
                    return Ok(());
                }
                continue;
            }
            Err(weft_events::Error::Closed) => return Ok(()),
            Err(source) => {
                tracing::error!(projection = name, error = %source, "the log cannot be read; the projection stopped");
                return Err(Error::Store { name, source });
            }
        };
        let Some(last) = batch.last().map(|e| e.position) else { continue };
        // Nothing in it for this model (most commits of a busy node are another model's): no transaction; the
        // position moves on all the same, and is saved with the next batch applied or when idle.
        if !batch.iter().any(|event| projection.wants(event)) {
            unsaved = Some(last);
        } else {
            unsaved = None;
            let mut apply = |db: &mut Connection| -> Result<(), ApplyError> {
                // One writer at a time per file, taken here rather than in SQLite: SQLite's busy handler waits
                // by sleeping (up to 100 ms a try), which showed as lag; a mutex hands over as soon as it is free.
                let _turn = writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
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
            // A batch that did not apply left nothing behind (its transaction rolled back): apply it again.
            while let Err(source) = apply(&mut db) {
                tracing::error!(projection = name, error = %source, first = batch[0].position, "a batch did not apply; trying again");
                health.retrying(format!("applying positions {}..={last}: {source}", batch[0].position));
                if !wait_to_retry(&runtime, &mut stopped, &mut delay) {
                    return Ok(());
                }
            }
        }
        delay = MIN_RETRY_DELAY;
        health.running();
        position.send_replace(last);
    }
}
