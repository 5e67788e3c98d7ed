//! A group: the projections of one read-model file on one thread (see the parent module's doc), and the
//! thread that checkpoints the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{Connection, params};
use tokio::sync::{mpsc, watch};
use weft_events::{EventRead, Health, Subscription};

use super::{Error, MAX_RETRY_DELAY, MIN_RETRY_DELAY, Slot, Stop, Stopped, lock, open};
use crate::{ApplyError, Projection};

/// How long a group waits after batches passed over before it saves their positions (unless a batch it
/// applies saves them first).
const SAVE_WHEN_IDLE: std::time::Duration = std::time::Duration::from_millis(200);

/// One projection of a group.
pub(super) struct Member {
    pub(super) projection: Box<dyn Projection>,
    /// The position of the last event it has applied or passed over.
    pub(super) position: u64,
    /// Whether `position` was reached by passing over batches, and is not saved yet.
    pub(super) unsaved: bool,
    pub(super) sender: Arc<watch::Sender<u64>>,
    pub(super) health: Health,
    pub(super) slot: Arc<Slot>,
}

/// The projections of one file that one thread runs, and what the thread needs.
pub(super) struct Group {
    pub(super) members: Vec<Member>,
    pub(super) path: PathBuf,
    pub(super) writer: Arc<std::sync::Mutex<()>>,
    pub(super) store: Arc<dyn EventRead>,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) controls: mpsc::UnboundedReceiver<Stop>,
    /// The last member's stop, answered once the connection is closed.
    pub(super) farewell: Option<std::sync::mpsc::Sender<Stopped>>,
    /// The wait before the next try of a failed read or apply.
    pub(super) delay: std::time::Duration,
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
    pub(super) fn spawn(self, db: Connection) -> Result<(), Box<(Self, Connection, Error)>> {
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
        // Whether each member wants some of its part: asked once.
        let wanting: Vec<bool> =
            self.members.iter().map(|m| part(m).iter().any(|event| m.projection.wants(event))).collect();
        let wanted = wanting.contains(&true);
        if wanted {
            let (_span, started) = (
                tracing::debug_span!(
                    "projection_batch",
                    events = batch.len(),
                    first,
                    last,
                    models = self.members.len()
                )
                .entered(),
                std::time::Instant::now(),
            );
            // One writer at a time per file, taken here rather than in SQLite: SQLite's busy handler waits by
            // sleeping (up to 100 ms a try), which showed as lag; a mutex hands over as soon as it is free.
            let _turn = lock(&self.writer);
            let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(Failure::Commit)?;
            for (index, member) in self.members.iter_mut().enumerate() {
                let events = part(member);
                if events.is_empty() {
                    continue;
                }
                if wanting[index] {
                    for event in events {
                        member.projection.apply(&tx, event).map_err(|e| Failure::Member(index, e))?;
                    }
                }
                save(&tx, member.projection.name(), last).map_err(|e| Failure::Member(index, e.into()))?;
            }
            tx.commit().map_err(Failure::Commit)?;
            metrics::histogram!("weft_projection_batch_duration_seconds").record(started.elapsed());
            metrics::histogram!("weft_projection_batch_events").record(batch.len() as f64);
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
            let saved = db
                .prepare_cached(SAVE_POSITION)
                .and_then(|mut save| save.execute(params![member.projection.name(), member.position as i64]));
            if let Err(error) = saved {
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

pub(super) fn save(tx: &rusqlite::Transaction<'_>, name: &str, position: u64) -> rusqlite::Result<usize> {
    tx.prepare_cached(SAVE_POSITION)?.execute(params![name, position as i64])
}
