//! `weft events`: the operator's tools over a store's events, working on the store itself (the SQLite file,
//! or the JetStream stream), not through a node.
//!
//! - [`inspect`]: `streams`, `cat`, `show`, `tail`: what is stored, decoded; `state`, `diff`: an aggregate's
//!   state at a version or a time, folded with the write side's own `evolve`.
//! - [`export`]: `export` and `import` in the export format (versioned JSON lines, see `docs/replay.md`),
//!   between any two backends.
//! - [`verify`]: `verify`: every check the store's promises allow, as a report, with the log's [`digest`].
//! - [`copy`]: `copy`: a log, its keys and its process managers' checkpoints into another store, proved by
//!   the digests of both ends.
//!
//! Reading never writes: on SQLite it goes through a [`View`](crate::store::sqlite::view::View) of the files, so it works while a node has the
//! store open. `import` writes, so on SQLite it needs the node stopped (the store's lock says so).

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Value, json};
use weft_events::domain::{self, DecodeError};
use weft_events::{Envelope, EventRead, EventStore, Timestamp};

use crate::store::open::{self as store, Mode, Opened};

pub mod cli;
pub mod copy;
pub mod digest;
pub mod export;
pub mod inspect;
pub mod progress;
pub mod verify;

/// Most events one read of the tools asks for: the stores' largest page.
pub const PAGE_EVENTS: usize = weft_events::store::DEFAULT_MAX_PAGE_SIZE;

/// Which store the tools work on: the same flags (and `WEFT_` variables) as `weft serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct Source {
    /// The event store's log file (SQLite).
    #[arg(long, default_value = "weft-data/events.db", env = "WEFT_STORE", global = true)]
    pub store: PathBuf,
    /// NATS server URLs, comma separated (with --jetstream).
    #[arg(long, env = "WEFT_NATS", global = true)]
    pub nats: Option<String>,
    /// Work on the JetStream store on the --nats servers instead of the SQLite file.
    #[arg(long, env = "WEFT_JETSTREAM", global = true)]
    pub jetstream: bool,
    /// The JetStream stream of the events.
    #[arg(long, default_value = "WEFT_EVENTS", env = "WEFT_JETSTREAM_STREAM", global = true)]
    pub jetstream_stream: String,
    /// Work on the KurrentDB store at this connection string instead (a build with the `kurrentdb` feature).
    #[arg(long, env = "WEFT_KURRENTDB", conflicts_with = "jetstream", hide_env_values = true, global = true)]
    pub kurrentdb: Option<String>,
    /// The KurrentDB store's namespace in the database.
    #[arg(long, default_value = "weft", env = "WEFT_KURRENTDB_NAMESPACE", global = true)]
    pub kurrentdb_namespace: String,
    /// The tenants' keys (SQLite; `keys.db` beside --store by default; with --jetstream, JetStream's): the
    /// tools show personal fields opened with them, `[erased]` for an erased tenant, and `[sealed]` where
    /// the keys are not at hand.
    #[arg(long, env = "WEFT_KEYS", global = true)]
    pub keys: Option<PathBuf>,
    /// Show personal fields as `[sealed]` instead of reading the keys.
    #[arg(long, global = true)]
    pub no_keys: bool,
    /// Credentials and TLS for NATS.
    #[command(flatten)]
    pub nats_auth: crate::nats::NatsAuth,
}

impl Source {
    /// What the tools print as the store's name.
    pub fn describe(&self) -> String {
        match self.options() {
            Ok(options) => options.describe(),
            Err(_) => format!("sqlite:{}", self.store.display()),
        }
    }

    /// Where the store is (see [`crate::store::open`]).
    pub fn options(&self) -> Result<store::Options, Error> {
        let jetstream = match (self.jetstream, &self.nats) {
            (true, Some(nats)) => Some(store::JetStream::new(nats, &self.jetstream_stream, &self.nats_auth)),
            (true, None) => return Err(Error::JetStreamNeedsNats),
            _ => None,
        };
        let kurrentdb = self.kurrentdb.as_ref().map(|connection| store::KurrentDb {
            connection: connection.clone(),
            namespace: self.kurrentdb_namespace.clone(),
        });
        Ok(store::Options { sqlite: self.store.clone(), jetstream, kurrentdb, keys: self.keys.clone() })
    }

    /// Opens the store for reading, with personal fields opened by the keys (read only; see
    /// [`Source::keys`]). SQLite: a read-only view, alongside a node that may have it open.
    pub async fn reader(&self) -> Result<Arc<dyn EventRead>, Error> {
        Ok(store::open(&self.options()?, Mode::Read { keys: !self.no_keys }, CLIENT).await?.reader())
    }

    /// Opens the store for reading its payloads as stored, personal fields sealed (export, verify).
    pub async fn raw_reader(&self) -> Result<Arc<dyn EventRead>, Error> {
        Ok(store::open(&self.options()?, Mode::Raw, CLIENT).await?.reader())
    }

    /// Opens the store for writing. SQLite: the store itself, which no node may have open meanwhile.
    pub async fn writer(&self) -> Result<Writer, Error> {
        let opened = store::open(&self.options()?, Mode::Write, CLIENT).await.map_err(|e| match e {
            store::OpenError::Store(e) if !self.jetstream && self.kurrentdb.is_none() => Error::Held(e),
            e => Error::Open(e),
        })?;
        let store = opened.store().expect("a store opened for writing writes");
        Ok(Writer { store, opened })
    }
}

/// Why a store tool failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--jetstream` without `--nats`.
    #[error("--jetstream needs --nats")]
    JetStreamNeedsNats,
    /// The store did not open.
    #[error(transparent)]
    Open(#[from] store::OpenError),
    /// The SQLite store is held by a node, and a tool that writes needs it alone.
    #[error("{0} (import writes to the store: stop the node that has it open, or import through JetStream)")]
    Held(weft_events::Error),
    /// Reading or writing the store failed.
    #[error(transparent)]
    Store(#[from] weft_events::Error),
    /// What was asked for is not there (a position, an event id, a stream's events or version).
    #[error("{0}")]
    NotFound(String),
    /// What was asked is not well formed (a key, a subject pattern, a stream that no aggregate has).
    #[error("{0}")]
    Invalid(String),
    /// An event of a stream could not be decoded with this build's types.
    #[error("{stream} version {version} (position {position}): {reason}")]
    Undecodable {
        /// The stream.
        stream: String,
        /// The event's version.
        version: u64,
        /// Its position.
        position: u64,
        /// Why.
        reason: String,
    },
    /// Writing the output failed.
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
    /// A state could not be shown as JSON.
    #[error("showing as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// The NATS connection's name of the tools.
const CLIENT: &str = "weft-events";

/// A store opened for writing; [`Writer::close`] it when done.
pub struct Writer {
    /// The store.
    pub store: Arc<dyn EventStore>,
    opened: Opened,
}

impl Writer {
    /// Waits for every append and closes the store's files.
    pub async fn close(self) -> Result<(), Error> {
        Ok(self.opened.close().await?)
    }
}

/// An event's payload as JSON, decoded with this build's event types (old schema versions upcast), or why it
/// cannot be.
pub fn payload_json(envelope: &Envelope) -> Result<Value, DecodeError> {
    let event = domain::Any::from_envelope(envelope)?;
    let value = serde_json::to_value(&event).unwrap_or(Value::Null);
    // `{"Document": {"Registered": {...}}}`: the envelope already says which, so only the fields are shown.
    let mut inner = value;
    for _ in 0..2 {
        inner = match inner {
            Value::Object(map) if map.len() == 1 => map.into_iter().next().map(|(_, v)| v).unwrap_or(Value::Null),
            other => return Ok(other),
        };
    }
    Ok(inner)
}

/// Pages of the log from `from` through `to`, read by a task of their own a page or two ahead of the
/// consumer, so that reading and what is done with the events overlap on two cores.
pub fn read_ahead(
    reader: Arc<dyn EventRead>,
    from: u64,
    to: u64,
) -> tokio::sync::mpsc::Receiver<Result<Vec<Envelope>, weft_events::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        let mut next = from.max(1);
        while next <= to {
            let limit = PAGE_EVENTS.min(usize::try_from(to - next + 1).unwrap_or(PAGE_EVENTS));
            let page = reader.read_all(next, limit).await;
            let stop = match &page {
                Ok(events) => match events.last() {
                    Some(last) => {
                        next = last.position + 1;
                        false
                    }
                    None => true,
                },
                Err(_) => true,
            };
            if tx.send(page).await.is_err() || stop {
                return;
            }
        }
    });
    rx
}

/// A time as RFC 3339 with microseconds, UTC.
pub fn rfc3339(at: Timestamp) -> String {
    chrono::DateTime::from_timestamp_micros(at.as_micros())
        .map_or_else(|| at.as_micros().to_string(), |t| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
}

/// An event as one JSON object: the envelope and the decoded payload (or, when it does not decode, the
/// reason and the payload's bytes in base64).
pub fn event_json(e: &Envelope) -> Value {
    let mut value = json!({
        "position": e.position,
        "stream": e.stream.as_str(),
        "version": e.version,
        "event_id": e.event_id,
        "event_type": &*e.event_type,
        "schema_version": e.schema_version,
        "recorded_at": rfc3339(e.recorded_at),
        "tenant": &*e.tenant,
        "actor": &*e.actor,
        "correlation_id": e.correlation_id,
        "causation_id": e.causation_id,
    });
    match payload_json(e) {
        Ok(payload) => value["payload"] = payload,
        Err(error) => {
            use base64::Engine as _;
            value["payload_error"] = Value::String(error.to_string());
            value["payload_base64"] = Value::String(base64::engine::general_purpose::STANDARD.encode(&e.payload));
        }
    }
    value
}
