//! Runs projections: subscribe-all from their saved positions, each batch applied and the positions saved in
//! one SQLite transaction.
//!
//! The projections of one read-model file run as a **group** ([`start_group`], what a node does): one thread
//! owns the file's SQLite connection (SQLite is blocking), one subscription reads the log, and each batch is
//! applied by every projection that wants some of it in one transaction, with their positions. A commit of
//! the log thus costs the read side one wake-up and one transaction, not one per model; and a rebuild of all
//! the models reads the log once. Each projection keeps its own position (a group starts from the lowest and
//! a projection skips what it has already applied), its own `watch` channel (so that the lag, the store's head
//! less the position, can be read at any time, and a query can wait until the projection has reached a
//! position), and its own [`Health`].
//!
//! A runner never ends on a failure: a log it cannot read now (the store unavailable, a read timed out) is
//! read again from the same position, and a batch that did not apply (the disk full, a bug) is applied again,
//! each after a wait that doubles up to [`MAX_RETRY_DELAY`]; its [`Health`] says so meanwhile, for the node's
//! `/readyz`. A projection of a group that fails to apply a batch leaves the group for a thread of its own
//! (where it tries again as above), so that one model's fault never holds back the others. Only a stop, or a
//! store that closes or hands back a gap, ends a runner.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension};
use tokio::sync::{mpsc, watch};
use weft_events::{EventRead, Health};

use crate::{ApplyError, Projection};

mod group;

use group::{Group, Member, save};

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

/// A running projection: one member of a group (see [`start_group`]).
pub struct Running {
    name: &'static str,
    path: PathBuf,
    store: Arc<dyn EventRead>,
    /// Kept across a [`rebuild`], so that those watching the position keep watching the one that serves.
    position_tx: Arc<watch::Sender<u64>>,
    /// Kept across a [`rebuild`] too.
    health: Health,
    position: watch::Receiver<u64>,
    /// Where its group takes a stop; `None` once stopped.
    slot: Option<Arc<Slot>>,
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

    /// Stops after the batch being applied and returns how the projection ended. The other projections of its
    /// group go on.
    pub fn stop(mut self) -> Result<(), Error> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), Error> {
        match self.slot.take() {
            Some(slot) => slot.stop(self.name),
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// How a [`Running`] reaches the thread that applies its projection: the group's, until the projection leaves
/// it for a thread of its own.
struct Slot {
    control: std::sync::Mutex<mpsc::UnboundedSender<Stop>>,
    /// How the projection ended, when its group ended by itself (the store closed or failed).
    ended: std::sync::Mutex<Option<Result<(), Error>>>,
}

/// A request to stop one projection of a group, answered once it has left the group (for the last one, once
/// the group's connection is closed).
struct Stop {
    name: &'static str,
    reply: std::sync::mpsc::Sender<Stopped>,
}

enum Stopped {
    /// It stopped, so.
    Ended(Result<(), Error>),
    /// It is not in this group (it left for a thread of its own meanwhile): ask again.
    Elsewhere,
}

impl Slot {
    fn new(control: mpsc::UnboundedSender<Stop>) -> Arc<Self> {
        Arc::new(Self { control: std::sync::Mutex::new(control), ended: std::sync::Mutex::new(None) })
    }

    /// Stops projection `name` and waits until it has stopped. Blocks: its group answers between batches.
    fn stop(&self, name: &'static str) -> Result<(), Error> {
        loop {
            let control = self.control.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            let (reply, answer) = std::sync::mpsc::channel();
            if control.send(Stop { name, reply }).is_err() {
                return self.outcome();
            }
            match answer.recv() {
                Ok(Stopped::Ended(result)) => return result,
                Ok(Stopped::Elsewhere) => continue,
                // The group ended meanwhile.
                Err(_) => return self.outcome(),
            }
        }
    }

    fn outcome(&self) -> Result<(), Error> {
        self.ended.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take().unwrap_or(Ok(()))
    }
}

/// Opens (or creates) the read-model database at `path` for `projection`, and starts applying the log from
/// the position saved there, on a thread of its own. Must be called within a tokio runtime.
pub fn start<P: Projection>(projection: P, path: &Path, store: Arc<dyn EventRead>) -> Result<Running, Error> {
    let mut running = start_members(vec![(Box::new(projection), None, None)], path, store)?;
    Ok(running.pop().expect("one member"))
}

/// Opens (or creates) the read-model database at `path` for `projections` (their names unique), and starts
/// applying the log to them as one group, each from the position saved for it. Must be called within a tokio
/// runtime. The handles are in the order of `projections`.
pub fn start_group(
    projections: Vec<Box<dyn Projection>>,
    path: &Path,
    store: Arc<dyn EventRead>,
) -> Result<Vec<Running>, Error> {
    start_members(projections.into_iter().map(|p| (p, None, None)).collect(), path, store)
}

fn open(path: &Path) -> Result<Connection, Error> {
    let open_error = |source| Error::Open { path: path.to_owned(), source };
    let db = Connection::open(path).map_err(open_error)?;
    // WAL: readers (the query API) never wait for the projection. NORMAL: a power loss may undo the last
    // batches, model and position together, which are then applied again.
    db.pragma_update(None, "journal_mode", "WAL").map_err(open_error)?;
    db.pragma_update(None, "synchronous", "NORMAL").map_err(open_error)?;
    // Several runners may share one file: each waits its turn to write.
    db.busy_timeout(std::time::Duration::from_secs(30)).map_err(open_error)?;
    db.set_prepared_statement_cache_capacity(64);
    // Statements prepared once: see `weft::store::sqlite::stable_plans`, which measured it.
    db.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true).map_err(open_error)?;
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS projection_positions (name TEXT PRIMARY KEY, position INTEGER NOT NULL)",
    )
    .map_err(open_error)?;
    Ok(db)
}

/// A projection to start, with the position watch and health it keeps (a restarted one's), if any.
type NewMember = (Box<dyn Projection>, Option<Arc<watch::Sender<u64>>>, Option<Health>);

fn start_members(members: Vec<NewMember>, path: &Path, store: Arc<dyn EventRead>) -> Result<Vec<Running>, Error> {
    let open_error = |source| Error::Open { path: path.to_owned(), source };
    let db = open(path)?;
    let (control, controls) = mpsc::unbounded_channel();
    let mut group = Vec::with_capacity(members.len());
    let mut handles = Vec::with_capacity(members.len());
    for (projection, position_tx, health) in members {
        projection.create(&db).map_err(open_error)?;
        let name = projection.name();
        let saved: u64 = db
            .query_row("SELECT position FROM projection_positions WHERE name = ?1", [name], |row| row.get::<_, i64>(0))
            .optional()
            .map_err(open_error)?
            .map_or(0, |p| p as u64);
        let position_tx = position_tx.unwrap_or_else(|| Arc::new(watch::channel(saved).0));
        position_tx.send_replace(saved);
        let health = health.unwrap_or_default();
        let slot = Slot::new(control.clone());
        handles.push(Running {
            name,
            path: path.to_owned(),
            store: store.clone(),
            position: position_tx.subscribe(),
            position_tx: position_tx.clone(),
            health: health.clone(),
            slot: Some(slot.clone()),
        });
        group.push(Member { projection, position: saved, unsaved: false, sender: position_tx, health, slot });
    }
    let group = Group {
        writer: writer_lock(path),
        path: path.to_owned(),
        store,
        runtime: tokio::runtime::Handle::current(),
        controls,
        members: group,
        farewell: None,
        delay: MIN_RETRY_DELAY,
    };
    group.spawn(db).map_err(|failed| failed.2)?;
    Ok(handles)
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
    if live.slot.is_none() {
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
    let member: NewMember = (Box::new(P::default()), Some(live.position_tx.clone()), Some(live.health.clone()));
    let mut running = start_members(vec![member], &live.path, live.store.clone())?;
    Ok(running.pop().expect("one member"))
}

/// Replaces `projection`'s tables in `path` by those in `scratch`, with `position`, in one transaction.
fn swap<P: Projection>(projection: P, path: &Path, scratch: &Path, position: u64) -> Result<(), Error> {
    let name = projection.name();
    let open_error = |source| Error::Open { path: path.to_owned(), source };
    let mut db = open(path)?;
    db.execute("ATTACH DATABASE ?1 AS fresh", [scratch.to_string_lossy()]).map_err(open_error)?;
    let writer = writer_lock(path);
    let _turn = lock(&writer);
    let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(open_error)?;
    for table in projection.tables() {
        tx.execute_batch(&format!("DROP TABLE IF EXISTS main.{table}")).map_err(open_error)?;
    }
    projection.create(&tx).map_err(open_error)?;
    for table in projection.tables() {
        tx.execute_batch(&format!("INSERT INTO main.{table} SELECT * FROM fresh.{table}")).map_err(open_error)?;
    }
    save(&tx, name, position).map_err(open_error)?;
    tx.commit().map_err(open_error)?;
    db.execute("DETACH DATABASE fresh", []).map_err(open_error)?;
    Ok(())
}

/// The in-process lock of the projections writing to `path` (one per file, shared by its runners).
fn writer_lock(path: &Path) -> Arc<std::sync::Mutex<()>> {
    static LOCKS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<PathBuf, Arc<std::sync::Mutex<()>>>>> =
        std::sync::LazyLock::new(Default::default);
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let mut locks = lock(&LOCKS);
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

/// Locks `mutex`, poisoned or not (what it guards stays whole: a swap of a sender, a turn to write).
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
