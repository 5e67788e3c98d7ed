//! `weft events copy --from STORE --to STORE`: a log moved between backends, whole, with its keys and the
//! process managers' checkpoints (`docs/storage.md`, "Moving a log").
//!
//! - **What is kept.** Every event with its id, stream, version, type, schema version, recorded time, tenant,
//!   actor, correlation and causation ids, and its payload byte for byte (personal fields stay sealed); every
//!   tenant's key, or its erasure, so that the copy opens (or refuses to open) the same fields.
//! - **Positions.** The target gives each event the next position of its own, in the order it stores them:
//!   the source's, unless the store had to send an append again (JetStream). On an empty target whose source's
//!   positions run from 1 without a gap, every position is then kept; otherwise the copy says how they map, as
//!   runs (`source_from`, `target_from`, `events`).
//! - **Checkpoints.** The process managers' checkpoints (`process-*`) are saved on the target with their
//!   positions translated (to a watermark: just below the first target position of an event after the
//!   source's one) and their state as it was. Read models live beside a node, not in the store: a node started on the copy with a read
//!   model of the source rebuilds it when positions moved (the copy says whether they did).
//! - **Resuming.** Progress is saved on the target as checkpoint `copy`, after what it names is stored. A target
//!   that holds events is refused unless `--resume` says to go on: the copy then starts after the saved
//!   position and checks, for each stream, the events the target has already (same event id at the same
//!   version: there; another: a conflict, and nothing more is copied).
//! - **Proof.** Both ends are digested the way `weft events verify` does (per stream: its events' ids,
//!   versions, metadata and a SHA-256 of their payloads): the source as it is read (a resumed copy reads it
//!   whole again at the end), the target read whole at the end. The copy fails unless they agree.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;
use weft_events::{Appended, Checkpoint, Envelope, EventRead, EventStore, ExpectedVersion, NewEvent, StreamName};

use super::digest::{self, Digest, Digester};
use crate::store::keys::{Carried, CarryError, Keys};
use crate::store::open::{self as store, Mode};
pub use place::Place;
use runs::Progress;
pub use runs::Run;

/// The checkpoint on the target that records how far a copy got.
pub const PROGRESS: &str = "copy";

/// Appends in flight into a JetStream store.
const JETSTREAM_WINDOW: usize = 64;

/// Save progress after this many events at most.
const SAVE_EVERY_EVENTS: u64 = 20_000;

mod place;
mod runs;

/// What a copy did.
#[derive(Debug, Clone, Serialize)]
pub struct Copied {
    /// The source.
    pub from: String,
    /// The target.
    pub to: String,
    /// Events appended by this run.
    pub events: u64,
    /// Events found on the target already (a resumed copy).
    pub already_there: u64,
    /// The source's last position copied.
    pub through: u64,
    /// Whether every event kept its position.
    pub positions_kept: bool,
    /// How the positions map, when they were not all kept.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub position_runs: Vec<Run>,
    /// Tenants whose keys were carried over, or found there already.
    pub keys: Carried,
    /// The process managers' checkpoints saved on the target, translated.
    pub checkpoints: Vec<String>,
    /// Events and streams at both ends, and their digest, the same.
    pub verified: Digest,
}

/// Why a copy failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The target holds events and `--resume` was not given.
    #[error(
        "the target {target} holds {events} events; --resume goes on with a copy into it (the events there are \
         checked against the source's), or copy into an empty store"
    )]
    NotEmpty {
        /// The target.
        target: String,
        /// Its events.
        events: u64,
    },
    /// The target holds another event where the source's should go.
    #[error(
        "{stream} version {version}: the target holds event {found}, the source has {expected}; nothing more was copied"
    )]
    Conflict {
        /// The stream.
        stream: String,
        /// The version.
        version: u64,
        /// The target's event.
        found: uuid::Uuid,
        /// The source's.
        expected: uuid::Uuid,
    },
    /// Source and target disagree after the copy.
    #[error("the copy does not match its source: source {source_digest:?}, target {target_digest:?}")]
    Mismatch {
        /// The source's digest.
        source_digest: Digest,
        /// The target's.
        target_digest: Digest,
    },
    /// The source and the target are one store.
    #[error("the source and the target are the same store ({0})")]
    Same(String),
    /// Two JetStream stores on one set of servers share their snapshot and checkpoint buckets.
    #[error(
        "the source and the target are both on {0}, where two streams share the snapshot and checkpoint \
         buckets: copy to another server (or through a SQLite file)"
    )]
    SameServers(String),
    /// A tenant's key differs at the two ends.
    #[error("{0}")]
    Keys(String),
    /// A store failed.
    #[error(transparent)]
    Store(#[from] weft_events::Error),
    /// A store did not open.
    #[error(transparent)]
    Open(#[from] store::OpenError),
}

impl From<CarryError> for Error {
    fn from(error: CarryError) -> Self {
        match error {
            CarryError::Store(e) => Error::Store(e),
            CarryError::Differs(why) => Error::Keys(why),
        }
    }
}

/// Copies the log at `from` into `to` (see the module doc); `progress(done, total)` as it goes.
pub async fn copy(
    from: &store::Options,
    to: &store::Options,
    resume: bool,
    client: &str,
    mut progress: impl FnMut(u64, u64),
) -> Result<Copied, Error> {
    let (source_name, target_name) = (from.describe(), to.describe());
    if source_name == target_name {
        return Err(Error::Same(source_name));
    }
    if let (Some(a), Some(b)) = (&from.jetstream, &to.jetstream)
        && a.nats == b.nats
    {
        // Their snapshots and checkpoints would be one bucket's.
        return Err(Error::SameServers(a.nats.clone()));
    }
    let source = store::open(from, Mode::Raw, client).await?.reader();
    let opened = store::open(to, Mode::Write, client).await?;
    let target = opened.store().expect("a store opened for writing writes");
    let result = copy_open(&source, &target, from, to, resume, client, &mut progress).await;
    let closed = opened.close().await;
    let copied = result?;
    closed?;
    Ok(copied)
}

async fn copy_open(
    source: &Arc<dyn EventRead>,
    target: &Arc<dyn EventStore>,
    from: &store::Options,
    to: &store::Options,
    resume: bool,
    client: &str,
    progress: &mut impl FnMut(u64, u64),
) -> Result<Copied, Error> {
    let (source_name, target_name) = (from.describe(), to.describe());
    let there = target.head().await?;
    let progress_name = StreamName::from_stored(PROGRESS);
    let mut state = match target.load_checkpoint(&progress_name).await? {
        Some(saved) if there > 0 => weft_events::codec::decode::<Progress>(&saved.state).unwrap_or_default(),
        _ => Progress::default(),
    };
    if there > 0 && !resume {
        return Err(Error::NotEmpty { target: target_name, events: there });
    }
    state.source = source_name.clone();

    // The keys first: an event is never on the target without what opens it.
    let source_keys = store::keys(from, false, client).await?;
    let target_keys = store::keys(to, true, client).await?;
    let keys = carry_keys(&source_keys, &target_keys).await?;

    let head = source.head().await?;
    // SQLite commits appends in the order they are asked for. JetStream stores what one connection sends in
    // the order sent, and the store sends appends in the order they were asked for unless one is retried; an
    // append that came out of order shows in the runs, and the checkpoints are moved below it.
    // KurrentDB commits what one client sends at once in the order its writer takes them, which need not be
    // the order asked: the same window as JetStream's, and the same runs when the order changed.
    let window =
        if to.jetstream.is_none() && to.kurrentdb.is_none() { super::export::IMPORT_WINDOW } else { JETSTREAM_WINDOW };
    // A copy from the start reads every event of the source once, and digests them as it goes; a resumed one
    // reads the source whole again at the end.
    let mut digester = (there == 0).then(Digester::default);
    let run = (there > 0, window);
    let (appended, found) = copy_events(source, target, &mut state, run, head, digester.as_mut(), progress).await?;
    let through = state.through;
    let checkpoints = translate_checkpoints(source, target, &state).await?;

    let source_digest = match digester {
        Some(digester) => digester.finish(),
        None => digest::digest(source.clone(), through).await?,
    };
    let target_reader: Arc<dyn EventRead> = target.clone();
    let target_digest = digest::digest(target_reader, target.head().await?).await?;
    if source_digest != target_digest {
        return Err(Error::Mismatch { source_digest, target_digest });
    }
    let kept = state.kept();
    Ok(Copied {
        from: source_name,
        to: target_name,
        events: appended,
        already_there: found,
        through,
        positions_kept: kept,
        position_runs: if kept { Vec::new() } else { state.runs },
        keys,
        checkpoints,
        verified: target_digest,
    })
}

/// Every tenant's key (or erasure) of `source` onto `target`.
async fn carry_keys(source: &Keys, target: &Keys) -> Result<Carried, Error> {
    let mut carried = Carried::default();
    for tenant in source.tenants().await? {
        let Some(state) = source.lookup(&tenant).await? else { continue };
        target.carry(&tenant, &state, &mut carried).await?;
    }
    Ok(carried)
}

/// A gathered append: consecutive events of one stream, with their source positions.
struct Batch {
    stream: StreamName,
    first_version: u64,
    events: Vec<NewEvent>,
    positions: Vec<u64>,
    bytes: usize,
}

type Flight = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(Vec<u64>, Appended), Error>> + Send>>;

/// The appends of a copy: gathered per stream, `window` in flight, placed in the source's order.
struct Appends {
    target: Arc<dyn EventStore>,
    window: usize,
    batch: Option<Batch>,
    in_flight: futures::stream::FuturesOrdered<Flight>,
    /// The streams of the appends in flight, in order: a stream's next append waits for its last one.
    flying: std::collections::VecDeque<StreamName>,
    /// Events asked to be appended.
    appended: u64,
}

impl Appends {
    /// Adds `event` (read at `position`) to the appends.
    async fn add(&mut self, event: Envelope, state: &mut Progress) -> Result<(), Error> {
        let limits = self.target.limits();
        let size = event.payload.len();
        let fits = self.batch.as_ref().is_some_and(|b| {
            b.stream == event.stream
                && b.events.len() < limits.max_events_per_append
                && b.bytes + size <= limits.max_append_bytes
        });
        if !fits {
            self.send(state, false).await?;
        }
        let (stream, version, position) = (event.stream.clone(), event.version, event.position);
        let new = new_event(event);
        match &mut self.batch {
            Some(b) => {
                b.events.push(new);
                b.positions.push(position);
                b.bytes += size;
            }
            None => {
                let (events, positions) = (vec![new], vec![position]);
                self.batch = Some(Batch { stream, first_version: version, events, positions, bytes: size });
            }
        }
        Ok(())
    }

    /// Sends the gathered append, waiting for room (and for its stream's last append) first; with `all`, waits
    /// for every append to be stored.
    async fn send(&mut self, state: &mut Progress, all: bool) -> Result<(), Error> {
        if let Some(batch) = self.batch.take() {
            while self.flying.contains(&batch.stream) || self.in_flight.len() >= self.window.max(1) {
                self.land(state).await?;
            }
            self.appended += batch.events.len() as u64;
            self.flying.push_back(batch.stream.clone());
            let target = self.target.clone();
            self.in_flight.push_back(Box::pin(async move {
                let expected = match batch.first_version {
                    1 => ExpectedVersion::NoStream,
                    v => ExpectedVersion::Exact(v - 1),
                };
                let appended = target.append(&batch.stream, expected, batch.events).await?;
                Ok((batch.positions, appended))
            }));
        }
        while all && !self.in_flight.is_empty() {
            self.land(state).await?;
        }
        Ok(())
    }

    /// Waits for the oldest append in flight and places its events.
    async fn land(&mut self, state: &mut Progress) -> Result<(), Error> {
        let (positions, at) = self.in_flight.next().await.expect("an append in flight")?;
        self.flying.pop_front();
        for (i, source) in positions.iter().enumerate() {
            state.placed(*source, at.first_position + i as u64);
        }
        state.through = positions.last().copied().unwrap_or(state.through);
        Ok(())
    }
}

/// Copies the source's events after `state.through` through `head`, `window` appends in flight, moving
/// `state` on as they are stored, and adding each event read to `digester`. Returns (events appended, events
/// found there).
async fn copy_events(
    source: &Arc<dyn EventRead>,
    target: &Arc<dyn EventStore>,
    state: &mut Progress,
    (resumed, window): (bool, usize),
    head: u64,
    mut digester: Option<&mut Digester>,
    progress: &mut impl FnMut(u64, u64),
) -> Result<(u64, u64), Error> {
    // Where each stream stands on the target, learned on its first event when resuming: its version then.
    let mut present: HashMap<StreamName, u64> = HashMap::new();
    let saved = state.through;
    let mut pages = super::read_ahead(source.clone(), saved + 1, head);
    let mut appends = Appends {
        target: target.clone(),
        window,
        batch: None,
        in_flight: futures::stream::FuturesOrdered::new(),
        flying: std::collections::VecDeque::new(),
        appended: 0,
    };
    let (mut found, mut unsaved) = (0u64, 0u64);
    let progress_name = StreamName::from_stored(PROGRESS);
    loop {
        let page = pages.recv().await.transpose()?;
        let done = page.is_none();
        for event in page.unwrap_or_default() {
            if let Some(digester) = digester.as_deref_mut() {
                digester.add(&event);
            }
            if resumed && let Some(at) = already_there(target, &mut present, &event).await? {
                // What comes before it is placed first, so the runs stay in order.
                appends.send(state, true).await?;
                state.placed(event.position, at);
                state.through = event.position;
                found += 1;
                continue;
            }
            appends.add(event, state).await?;
        }
        if done {
            appends.send(state, true).await?;
            // Every event through the head read at the start is on the target now.
            state.through = state.through.max(head).max(saved);
        }
        if done || appends.appended - unsaved >= SAVE_EVERY_EVENTS {
            unsaved = appends.appended;
            let encoded = weft_events::codec::encode(&*state)
                .map_err(|e| weft_events::Error::Corrupt { location: PROGRESS.into(), detail: e.to_string() })?;
            let position = state.translate(state.through);
            target.save_checkpoint(Checkpoint { name: progress_name.clone(), position, state: encoded.into() }).await?;
        }
        progress(state.through, head);
        if done {
            return Ok((appends.appended, found));
        }
    }
}

/// The target's position of `event` when it is there already (an earlier run of the copy put it there); a
/// conflict when the target holds another event at its version.
async fn already_there(
    target: &Arc<dyn EventStore>,
    present: &mut HashMap<StreamName, u64>,
    event: &Envelope,
) -> Result<Option<u64>, Error> {
    let version = match present.get(&event.stream) {
        Some(version) => *version,
        None => {
            let version = target.stream_version(&event.stream).await?;
            present.insert(event.stream.clone(), version);
            version
        }
    };
    if event.version > version {
        return Ok(None);
    }
    let there = target.read_stream(&event.stream, event.version, weft_events::Direction::Forwards, 1).await?;
    match there.first() {
        Some(found) if found.event_id == event.event_id => Ok(Some(found.position)),
        Some(found) => Err(Error::Conflict {
            stream: event.stream.to_string(),
            version: event.version,
            found: found.event_id,
            expected: event.event_id,
        }),
        None => Ok(None),
    }
}

fn new_event(e: Envelope) -> NewEvent {
    let mut new = NewEvent::new(&*e.event_type, e.payload)
        .schema_version(e.schema_version)
        .tenant(&*e.tenant)
        .actor(&*e.actor)
        .recorded_at(e.recorded_at);
    new.event_id = e.event_id;
    new.correlation_id = e.correlation_id;
    new.causation_id = e.causation_id;
    new
}

/// The source's process managers' checkpoints onto the target, positions translated. Returns their names.
async fn translate_checkpoints(
    source: &Arc<dyn EventRead>,
    target: &Arc<dyn EventStore>,
    state: &Progress,
) -> Result<Vec<String>, Error> {
    let mut saved = Vec::new();
    for name in source.checkpoint_names().await? {
        if !name.as_str().starts_with("process-") {
            continue;
        }
        let Some(checkpoint) = source.load_checkpoint(&name).await? else { continue };
        let position = state.translate(checkpoint.position);
        target.save_checkpoint(Checkpoint { name: name.clone(), position, state: checkpoint.state }).await?;
        saved.push(name.to_string());
    }
    Ok(saved)
}
