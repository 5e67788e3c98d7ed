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

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, watch};
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

/// How long a group waits after batches passed over before it saves their positions (unless a batch it
/// applies saves them first).
const SAVE_WHEN_IDLE: std::time::Duration = std::time::Duration::from_millis(200);

/// One projection of a group.
struct Member {
    projection: Box<dyn Projection>,
    /// The position of the last event it has applied or passed over.
    position: u64,
    /// Whether `position` was reached by passing over batches, and is not saved yet.
    unsaved: bool,
    sender: Arc<watch::Sender<u64>>,
    health: Health,
    slot: Arc<Slot>,
}

/// The projections of one file that one thread runs, and what the thread needs.
struct Group {
    members: Vec<Member>,
    path: PathBuf,
    writer: Arc<std::sync::Mutex<()>>,
    store: Arc<dyn EventRead>,
    runtime: tokio::runtime::Handle,
    controls: mpsc::UnboundedReceiver<Stop>,
    /// The last member's stop, answered once the connection is closed.
    farewell: Option<std::sync::mpsc::Sender<Stopped>>,
    /// The wait before the next try of a failed read or apply.
    delay: std::time::Duration,
}

/// Checkpoints a read-model file's WAL into the file on a thread of its own, every [`CHECKPOINT_EVERY`], so
/// that the group's thread never waits for a checkpoint's `fsync` (its connection does not checkpoint).
struct Checkpointer {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

/// How often a [`Checkpointer`] checkpoints (a passive checkpoint with nothing to copy costs a read of the
/// WAL's index).
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

impl Checkpointer {
    fn start(path: &Path) -> Result<Self, Error> {
        let db = open(path)?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let location = path.display().to_string();
        let thread = std::thread::Builder::new()
            .name("projection-wal".into())
            .spawn(move || {
                loop {
                    let last = !matches!(
                        stopped.recv_timeout(CHECKPOINT_EVERY),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                    );
                    // PASSIVE: never waits for the writer or readers; what it cannot copy now, the next one does.
                    if let Err(error) = db.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        tracing::warn!(file = %location, %error, "a checkpoint of the read models failed");
                    }
                    if last {
                        return;
                    }
                }
            })
            .map_err(|source| Error::Thread { name: "checkpoints", source })?;
        Ok(Self { stop, thread })
    }

    /// Checkpoints once more and ends.
    fn finish(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

/// Why a batch did not apply.
enum Failure {
    /// Member `index`'s projection failed (its transaction was rolled back with the others').
    Member(usize, ApplyError),
    /// The transaction itself failed.
    Commit(rusqlite::Error),
}

/// What ended a group's wait.
enum Waited<T> {
    /// What it waited for.
    Done(T),
    /// A stop (handled by the caller, which holds the connection).
    Stop(Stop),
    /// The time-out.
    TimedOut,
}

impl Group {
    /// Starts the group's thread, which owns `db` (opened on the group's file) and reads the log from just after
    /// the lowest of its members' positions. A thread that cannot start gives the group back.
    fn spawn(self, db: Connection) -> Result<(), Box<(Self, Connection, Error)>> {
        let first = self.members.first().map_or("projections", |m| m.projection.name());
        let thread = match self.members.len() {
            1 => format!("projection-{first}"),
            _ => "projections".to_owned(),
        };
        // A thread of its own checkpoints (see `Checkpointer`).
        if let Err(source) = db.pragma_update(None, "wal_autocheckpoint", 0) {
            let path = self.path.clone();
            return Err(Box::new((self, db, Error::Open { path, source })));
        }
        // Handed over once the thread runs, so that a thread that did not start leaves them here.
        let (give, take) = std::sync::mpsc::channel::<(Self, Connection)>();
        let started = std::thread::Builder::new().name(thread).spawn(move || {
            if let Ok((group, db)) = take.recv() {
                let checkpoints = match Checkpointer::start(&group.path) {
                    Ok(checkpoints) => Some(checkpoints),
                    Err(error) => {
                        // The connection checkpoints then, as SQLite does by default.
                        tracing::warn!(%error, "no checkpointer: the projections checkpoint their file themselves");
                        let _ = db.pragma_update(None, "wal_autocheckpoint", 1000);
                        None
                    }
                };
                let from = group.members.iter().map(|m| m.position).min().unwrap_or(0) + 1;
                let subscription = {
                    let _runtime = group.runtime.enter();
                    group.store.subscribe_all(from)
                };
                group.run(db, subscription, checkpoints);
            }
        });
        match started {
            Ok(_) => {
                give.send((self, db)).map_err(|_| ()).expect("the group's thread waits for it");
                Ok(())
            }
            Err(source) => Err(Box::new((self, db, Error::Thread { name: first, source }))),
        }
    }

    fn run(mut self, mut db: Connection, mut subscription: Subscription, checkpoints: Option<Checkpointer>) {
        let ended = self.apply_all(&mut db, &mut subscription);
        self.save_passed_over(&mut db);
        drop(db);
        if let Some(checkpoints) = checkpoints {
            checkpoints.finish();
        }
        for member in self.members.drain(..) {
            member.health.stopped();
            if let Err(source) = &ended {
                let error = Error::Store { name: member.projection.name(), source: source.clone() };
                *lock(&member.slot.ended) = Some(Err(error));
            }
        }
        // Stops that came meanwhile (the ended outcome is read by the stopping handle).
        self.controls.close();
        while let Ok(stop) = self.controls.try_recv() {
            let _ = stop.reply.send(Stopped::Elsewhere);
        }
        if let Some(farewell) = self.farewell.take() {
            let _ = farewell.send(Stopped::Ended(Ok(())));
        }
    }

    /// Applies the log until every member has stopped (`Ok`) or the store cannot be read (`Err`).
    fn apply_all(&mut self, db: &mut Connection, subscription: &mut Subscription) -> Result<(), weft_events::Error> {
        for member in &self.members {
            member.health.running();
        }
        while !self.members.is_empty() {
            let idle = if self.members.iter().any(|m| m.unsaved) { Some(SAVE_WHEN_IDLE) } else { None };
            // `next_batch` is cancel-safe: a read cut short by a stop or the idle save is taken up again.
            let batch = match self.wait(subscription.next_batch(), idle) {
                Waited::Done(batch) => batch,
                Waited::Stop(stop) => {
                    self.leave(db, stop);
                    continue;
                }
                Waited::TimedOut => {
                    self.save_passed_over(db);
                    continue;
                }
            };
            let batch = match batch {
                Ok(batch) => batch,
                Err(source) if source.is_retryable() => {
                    // The subscription keeps its place: the next read starts where this one failed.
                    tracing::warn!(error = %source, "reading the log failed; trying again");
                    for member in &self.members {
                        let at = *member.sender.borrow();
                        member.health.retrying(format!("reading the log after position {at}: {source}"));
                    }
                    self.pause(db);
                    continue;
                }
                Err(weft_events::Error::Closed) => return Ok(()),
                Err(source) => {
                    tracing::error!(error = %source, "the log cannot be read; the projections stopped");
                    return Err(source);
                }
            };
            if !batch.is_empty() {
                self.apply_batch(db, &batch);
            }
        }
        Ok(())
    }

    /// Applies `batch` to every member that has not, until it is (or every member has stopped).
    fn apply_batch(&mut self, db: &mut Connection, batch: &[weft_events::Envelope]) {
        loop {
            let failure = match self.try_batch(db, batch) {
                Ok(()) => {
                    self.delay = MIN_RETRY_DELAY;
                    return;
                }
                Err(failure) => failure,
            };
            let (first, last) = (batch[0].position, batch[batch.len() - 1].position);
            match failure {
                Failure::Member(index, source) if self.members.len() > 1 => {
                    // Out of the group, so that the others go on: on a thread of its own it tries again.
                    let member = self.members.remove(index);
                    let name = member.projection.name();
                    tracing::error!(projection = name, error = %source, first, "a batch did not apply; the projection goes on alone and tries again");
                    member.health.retrying(format!("applying positions {first}..={last}: {source}"));
                    if let Err(failed) = self.split(member) {
                        let (member, error) = *failed;
                        tracing::error!(projection = name, %error, "the projection could not leave its group");
                        self.members.insert(index, member);
                        self.pause(db);
                    }
                }
                Failure::Member(index, source) => {
                    let name = self.members[index].projection.name();
                    tracing::error!(projection = name, error = %source, first, "a batch did not apply; trying again");
                    self.members[index].health.retrying(format!("applying positions {first}..={last}: {source}"));
                    self.pause(db);
                }
                Failure::Commit(source) => {
                    tracing::error!(error = %source, first, "a batch did not commit; trying again");
                    for member in &self.members {
                        member.health.retrying(format!("applying positions {first}..={last}: {source}"));
                    }
                    self.pause(db);
                }
            }
            if self.members.is_empty() {
                return;
            }
        }
    }

    /// Applies `batch` once: to each member the part past its position. A batch of which no member wants
    /// anything (most commits of a busy node are of another model) costs no transaction: the positions move
    /// on all the same, and are saved with the next batch applied or when idle.
    fn try_batch(&mut self, db: &mut Connection, batch: &[weft_events::Envelope]) -> Result<(), Failure> {
        let first = batch[0].position;
        let last = batch[batch.len() - 1].position;
        // Each member's part: what lies past its position.
        let part =
            |member: &Member| &batch[(member.position + 1).saturating_sub(first).min(batch.len() as u64) as usize..];
        let wanted = self.members.iter().any(|m| part(m).iter().any(|event| m.projection.wants(event)));
        if wanted {
            // One writer at a time per file, taken here rather than in SQLite: SQLite's busy handler waits by
            // sleeping (up to 100 ms a try), which showed as lag; a mutex hands over as soon as it is free.
            let _turn = lock(&self.writer);
            let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(Failure::Commit)?;
            for (index, member) in self.members.iter_mut().enumerate() {
                let events = part(member);
                if events.is_empty() {
                    continue;
                }
                if events.iter().any(|event| member.projection.wants(event)) {
                    for event in events {
                        member.projection.apply(&tx, event).map_err(|e| Failure::Member(index, e))?;
                    }
                }
                save(&tx, member.projection.name(), last).map_err(|e| Failure::Member(index, e.into()))?;
            }
            tx.commit().map_err(Failure::Commit)?;
        }
        for member in &mut self.members {
            if member.position >= last {
                continue;
            }
            member.position = last;
            member.unsaved = !wanted;
            member.health.running();
            member.sender.send_replace(last);
        }
        Ok(())
    }

    /// Saves the positions of members that passed over batches (best effort: one that is not saved reads those
    /// batches again after a restart, and passes them over again).
    fn save_passed_over(&mut self, db: &mut Connection) {
        if !self.members.iter().any(|m| m.unsaved) {
            return;
        }
        let _turn = lock(&self.writer);
        let saved = (|| {
            let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for member in self.members.iter().filter(|m| m.unsaved) {
                save(&tx, member.projection.name(), member.position)?;
            }
            tx.commit()
        })();
        match saved {
            Ok(()) => self.members.iter_mut().for_each(|m| m.unsaved = false),
            Err(error) => {
                tracing::warn!(%error, "a passed-over position was not saved; a restart reads on from an earlier one")
            }
        }
    }

    /// Starts `member` on a thread of its own, from its position, on the same file; gives it back if it cannot.
    fn split(&mut self, member: Member) -> Result<(), Box<(Member, Error)>> {
        let db = match open(&self.path) {
            Ok(db) => db,
            Err(error) => return Err(Box::new((member, error))),
        };
        let (control, controls) = mpsc::unbounded_channel();
        let slot = member.slot.clone();
        let previous = std::mem::replace(&mut *lock(&slot.control), control);
        let alone = Group {
            members: vec![member],
            path: self.path.clone(),
            writer: self.writer.clone(),
            store: self.store.clone(),
            runtime: self.runtime.clone(),
            controls,
            farewell: None,
            delay: self.delay,
        };
        alone.spawn(db).map_err(|failed| {
            let (mut alone, _db, error) = *failed;
            *lock(&slot.control) = previous;
            Box::new((alone.members.remove(0), error))
        })
    }

    /// Has `stop`'s member leave the group: its passed-over position saved, its health stopped. The last
    /// member's stop is answered once the connection is closed (see [`Group::run`]).
    fn leave(&mut self, db: &mut Connection, stop: Stop) {
        let Some(index) = self.members.iter().position(|m| m.projection.name() == stop.name) else {
            let _ = stop.reply.send(Stopped::Elsewhere);
            return;
        };
        if self.members[index].unsaved {
            let member = &self.members[index];
            let _turn = lock(&self.writer);
            if let Err(error) = db.execute(SAVE_POSITION, params![member.projection.name(), member.position as i64]) {
                tracing::warn!(projection = stop.name, %error, "a passed-over position was not saved; a restart reads on from an earlier one");
            }
        }
        let member = self.members.remove(index);
        member.health.stopped();
        if self.members.is_empty() {
            self.farewell = Some(stop.reply);
        } else {
            let _ = stop.reply.send(Stopped::Ended(Ok(())));
        }
    }

    /// Waits the retry delay (then doubles it up to [`MAX_RETRY_DELAY`]); a stop cuts it short.
    fn pause(&mut self, db: &mut Connection) {
        let wait = self.delay;
        self.delay = (self.delay * 2).min(MAX_RETRY_DELAY);
        if let Waited::Stop(stop) = self.wait(std::future::pending::<()>(), Some(wait)) {
            self.leave(db, stop);
        }
    }

    /// Waits for `future`, a stop, or `timeout`, whichever comes first.
    fn wait<T>(
        &mut self,
        future: impl std::future::Future<Output = T>,
        timeout: Option<std::time::Duration>,
    ) -> Waited<T> {
        let runtime = self.runtime.clone();
        runtime.block_on(async {
            tokio::select! {
                // The group's members hold senders (their slots): the channel never closes while it runs.
                Some(stop) = self.controls.recv() => Waited::Stop(stop),
                done = future => Waited::Done(done),
                () = tokio::time::sleep(timeout.unwrap_or_default()), if timeout.is_some() => Waited::TimedOut,
            }
        })
    }
}

/// Saves a projection's position (`?1` its name, `?2` the position).
const SAVE_POSITION: &str = "INSERT INTO projection_positions (name, position) VALUES (?1, ?2)
     ON CONFLICT (name) DO UPDATE SET position = excluded.position";

fn save(tx: &rusqlite::Transaction<'_>, name: &str, position: u64) -> rusqlite::Result<usize> {
    tx.prepare_cached(SAVE_POSITION)?.execute(params![name, position as i64])
}

/// Locks `mutex`, poisoned or not (what it guards stays whole: a swap of a sender, a turn to write).
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
