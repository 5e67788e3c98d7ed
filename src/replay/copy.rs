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
//! - **Proof.** At the end both ends are read whole and digested the way `weft events verify` does (per stream:
//!   its events' ids, versions, metadata and a SHA-256 of their payloads); the copy fails unless the digests of
//!   the source (through the position copied) and of the target agree.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use weft_events::{Appended, Checkpoint, Envelope, EventRead, EventStore, ExpectedVersion, NewEvent, StreamName};

use super::digest::{self, Digest};
use crate::store::keys::{Carried, Keys};
use crate::store::open::{self as store, Mode};

/// The checkpoint on the target that records how far a copy got.
pub const PROGRESS: &str = "copy";

/// Appends in flight into a JetStream store.
const JETSTREAM_WINDOW: usize = 64;

/// Save progress after this many events at most.
const SAVE_EVERY_EVENTS: u64 = 20_000;

/// A place a store is, as `--from` and `--to` name it: `sqlite:PATH` or `jetstream:URLS/STREAM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// A SQLite log file (its keys in `keys.db` beside it).
    Sqlite(std::path::PathBuf),
    /// A JetStream stream on these servers (its keys in `<STREAM>_KEYS`).
    JetStream {
        /// NATS server URLs, comma separated.
        nats: String,
        /// The events' stream.
        stream: String,
    },
}

impl std::str::FromStr for Place {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let usage =
            "a store is sqlite:PATH or jetstream:NATS_URLS/STREAM (jetstream:nats://127.0.0.1:4222/WEFT_EVENTS)";
        if let Some(path) = text.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err(format!("{text:?}: no path; {usage}"));
            }
            return Ok(Place::Sqlite(path.into()));
        }
        if let Some(rest) = text.strip_prefix("jetstream:") {
            let Some((nats, stream)) = rest.rsplit_once('/') else {
                return Err(format!("{text:?}: no stream; {usage}"));
            };
            let stream_ok = !stream.is_empty()
                && stream.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                && nats.contains("://");
            if !stream_ok {
                return Err(format!("{text:?}: {stream:?} is not a stream name after the servers' URLs; {usage}"));
            }
            return Ok(Place::JetStream { nats: nats.to_owned(), stream: stream.to_owned() });
        }
        Err(format!("{text:?}: {usage}"))
    }
}

impl Place {
    /// Where the store is, as [`store::open`] takes it; `auth` for a JetStream one.
    pub fn options(&self, auth: &crate::nats::NatsAuth) -> store::Options {
        match self {
            Place::Sqlite(path) => store::Options { sqlite: path.clone(), jetstream: None, keys: None },
            Place::JetStream { nats, stream } => store::Options {
                sqlite: "weft-data/events.db".into(),
                jetstream: Some(store::JetStream {
                    nats: nats.clone(),
                    stream: stream.clone(),
                    replicas: crate::store::jetstream::JetStreamConfig::default().replicas,
                    partitions: crate::store::jetstream::JetStreamConfig::default().partitions,
                    auth: auth.clone(),
                }),
                keys: None,
            },
        }
    }
}

/// A run of events whose positions follow on at both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// The source's position of its first event.
    pub source_from: u64,
    /// The target's position of it.
    pub target_from: u64,
    /// How many events.
    pub events: u64,
}

/// How far a copy got, saved on the target as checkpoint [`PROGRESS`] (at the target's position of `through`:
/// a checkpoint is never ahead of its own log).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Progress {
    /// The source, as it was named.
    source: String,
    /// The source's last position of which every event is on the target.
    through: u64,
    /// The runs of positions so far.
    runs: Vec<Run>,
}

impl Progress {
    /// Event `source` of the source is at `target` on the target.
    fn placed(&mut self, source: u64, target: u64) {
        if let Some(last) = self.runs.last_mut()
            && last.source_from + last.events == source
            && last.target_from + last.events == target
        {
            last.events += 1;
            return;
        }
        self.runs.push(Run { source_from: source, target_from: target, events: 1 });
    }

    /// The target's position for a checkpoint at the source's `position`: a watermark, every target position
    /// at or below it holding an event at or before `position` in the source. Just below the first target
    /// position of an event after it (the last event at or before it when the target kept the source's order;
    /// lower where it did not), or the last position copied when no event comes after it. A process that
    /// resumes there may handle events again, never skip one.
    fn translate(&self, position: u64) -> u64 {
        let mut first_after = None::<u64>;
        let mut last = 0;
        for run in &self.runs {
            if run.source_from > position {
                first_after = Some(first_after.map_or(run.target_from, |f| f.min(run.target_from)));
                continue;
            }
            let within = (position - run.source_from).min(run.events - 1);
            last = last.max(run.target_from + within);
            if within + 1 < run.events {
                let next = run.target_from + within + 1;
                first_after = Some(first_after.map_or(next, |f| f.min(next)));
            }
        }
        first_after.map_or(last, |first| first - 1)
    }

    /// Whether every position copied is the same at both ends.
    fn kept(&self) -> bool {
        self.runs.iter().all(|run| run.source_from == run.target_from)
    }
}

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
        Some(saved) if there > 0 => {
            let progress = weft_events::codec::decode::<Progress>(&saved.state).unwrap_or_default();
            (progress.through, progress)
        }
        _ => (0, Progress::default()),
    };
    if there > 0 && !resume {
        return Err(Error::NotEmpty { target: target_name, events: there });
    }
    state.1.source = source_name.clone();

    // The keys first: an event is never on the target without what opens it.
    let source_keys = store::keys(from, false, client).await?;
    let target_keys = store::keys(to, true, client).await?;
    let keys = carry_keys(&source_keys, &target_keys).await?;

    let head = source.head().await?;
    // SQLite commits appends in the order they are asked for. JetStream stores what one connection sends in
    // the order sent, and the store sends appends in the order they were asked for unless one is retried; an
    // append that came out of order shows in the runs, and the checkpoints are moved below it.
    let window = if to.jetstream.is_none() { super::export::IMPORT_WINDOW } else { JETSTREAM_WINDOW };
    let (through, copied) = copy_events(source, target, &mut state, (there > 0, window), head, progress).await?;
    let checkpoints = translate_checkpoints(source, target, &state.1).await?;

    let source_digest = digest::digest(source.clone(), through).await?;
    let target_reader: Arc<dyn EventRead> = target.clone();
    let target_digest = digest::digest(target_reader, target.head().await?).await?;
    if source_digest != target_digest {
        return Err(Error::Mismatch { source_digest, target_digest });
    }
    let kept = state.1.kept();
    Ok(Copied {
        from: source_name,
        to: target_name,
        events: copied.0,
        already_there: copied.1,
        through,
        positions_kept: kept,
        position_runs: if kept { Vec::new() } else { state.1.runs.clone() },
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
        target.carry(&tenant, &state, &mut carried).await.map_err(|e| match e {
            crate::store::keys::CarryError::Store(e) => Error::Store(e),
            crate::store::keys::CarryError::Differs(why) => Error::Keys(why),
        })?;
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
    /// The source's last position of which every event is on the target.
    through: u64,
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
        self.through = positions.last().copied().unwrap_or(self.through);
        Ok(())
    }
}

/// Copies the source's events after the saved position through `head`, `window` appends in flight. Returns
/// the source's last position copied and (events appended, events found there).
async fn copy_events(
    source: &Arc<dyn EventRead>,
    target: &Arc<dyn EventStore>,
    (saved, state): &mut (u64, Progress),
    (resumed, window): (bool, usize),
    head: u64,
    progress: &mut impl FnMut(u64, u64),
) -> Result<(u64, (u64, u64)), Error> {
    // Where each stream stands on the target, learned on its first event when resuming: its version then.
    let mut present: HashMap<StreamName, u64> = HashMap::new();
    let mut pages = super::read_ahead(source.clone(), *saved + 1, head);
    let mut appends = Appends {
        target: target.clone(),
        window,
        batch: None,
        in_flight: futures::stream::FuturesOrdered::new(),
        flying: std::collections::VecDeque::new(),
        appended: 0,
        through: *saved,
    };
    let (mut found, mut unsaved) = (0u64, 0u64);
    let progress_name = StreamName::from_stored(PROGRESS);
    loop {
        let page = pages.recv().await.transpose()?;
        let done = page.is_none();
        for event in page.unwrap_or_default() {
            if resumed && let Some(at) = already_there(target, &mut present, &event).await? {
                // What comes before it is placed first, so the runs stay in order.
                appends.send(state, true).await?;
                state.placed(event.position, at);
                appends.through = event.position;
                found += 1;
                continue;
            }
            appends.add(event, state).await?;
        }
        if done {
            appends.send(state, true).await?;
            // Every event through the head read at the start is on the target now.
            appends.through = appends.through.max(head).max(*saved);
        }
        if done || appends.appended - unsaved >= SAVE_EVERY_EVENTS {
            unsaved = appends.appended;
            state.through = appends.through;
            let encoded = weft_events::codec::encode(&*state)
                .map_err(|e| weft_events::Error::Corrupt { location: PROGRESS.into(), detail: e.to_string() })?;
            let position = state.translate(appends.through);
            target.save_checkpoint(Checkpoint { name: progress_name.clone(), position, state: encoded.into() }).await?;
        }
        progress(appends.through, head);
        if done {
            return Ok((appends.through, (appends.appended, found)));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_parse_and_bad_ones_say_what_a_place_is() {
        assert_eq!("sqlite:data/events.db".parse(), Ok(Place::Sqlite("data/events.db".into())));
        assert_eq!(
            "jetstream:nats://a:4222,nats://b:4222/WEFT_EVENTS".parse(),
            Ok(Place::JetStream { nats: "nats://a:4222,nats://b:4222".into(), stream: "WEFT_EVENTS".into() })
        );
        for bad in ["", "sqlite:", "events.db", "jetstream:nats://a:4222", "jetstream:WEFT", "jetstream:nats://a/b.c"] {
            let error = bad.parse::<Place>().unwrap_err();
            assert!(error.contains("sqlite:PATH or jetstream:"), "{bad}: {error}");
        }
    }

    #[test]
    fn positions_map_as_runs_and_checkpoints_translate_to_the_last_event_at_or_before() {
        let mut state = Progress::default();
        // Source 1-3 and 5-6 (4 is a gap), copied to 1-5.
        for (source, target) in [(1, 1), (2, 2), (3, 3), (5, 4), (6, 5)] {
            state.placed(source, target);
        }
        assert_eq!(
            state.runs,
            [Run { source_from: 1, target_from: 1, events: 3 }, Run { source_from: 5, target_from: 4, events: 2 }]
        );
        assert!(!state.kept());
        assert_eq!([0, 1, 3, 4, 5, 6, 9].map(|p| state.translate(p)), [0, 1, 3, 3, 4, 5, 5]);
        // Stored out of order (source 2 at target 3, source 3 at target 2): a checkpoint at 2 may only say 1.
        let mut swapped = Progress::default();
        for (source, target) in [(1, 1), (2, 3), (3, 2), (4, 4)] {
            swapped.placed(source, target);
        }
        assert!(!swapped.kept());
        assert_eq!([1, 2, 3, 4].map(|p| swapped.translate(p)), [1, 1, 3, 4]);
        let mut dense = Progress::default();
        (1..=4).for_each(|p| dense.placed(p, p));
        assert!(dense.kept());
        assert_eq!(dense.runs.len(), 1);
    }
}
