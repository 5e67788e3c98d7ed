//! One way to open a store, for everything that does: a node (`weft serve`), the operator's tools (`weft
//! events`), and imports. [`Options`] says where the store is (the same for all of them, whatever flags they
//! were read from); [`open`] opens it in one of the [`Mode`]s.
//!
//! - [`Mode::Node`]: the store itself (SQLite: held exclusively), sealed with keys the node makes and destroys.
//! - [`Mode::Read`]: the tools' reads. SQLite through a read-only [`View`], beside a node that may have the
//!   store open; personal fields opened with read-only keys, or left `[sealed]` without keys.
//! - [`Mode::Raw`]: payloads as stored, personal fields sealed (export, verify).
//! - [`Mode::Write`]: the store itself, unsealed (import copies sealed payloads as they are).

use std::path::PathBuf;
use std::sync::Arc;

use weft_events::{EventRead, EventStore};

use super::jetstream::{self, JetStreamConfig, JetStreamStore};
use super::keys::{self, Keys};
use super::sealed::{Erase, Sealed};
use super::sqlite::view::View;
use super::sqlite::{self, SqliteStore};

/// Where a store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The SQLite log file (the store unless `jetstream` is given; the keys' default folder either way).
    pub sqlite: PathBuf,
    /// The JetStream store instead, on these servers.
    pub jetstream: Option<JetStream>,
    /// The tenants' keys (SQLite): `keys.db` beside `sqlite` when `None`. A JetStream store keeps its keys in
    /// JetStream.
    pub keys: Option<PathBuf>,
}

/// A JetStream store's place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetStream {
    /// NATS server URLs, comma separated.
    pub nats: String,
    /// The events' stream.
    pub stream: String,
    /// Its replicas (and the keys' bucket's), when made.
    pub replicas: usize,
    /// Its partitions, when made (an existing stream keeps its own).
    pub partitions: u32,
    /// The credentials and TLS to connect with.
    pub auth: crate::nats::NatsAuth,
}

impl JetStream {
    /// The stream `stream` on the servers `nats`, reached with `auth`, made (when missing) with the default
    /// replicas and partitions.
    pub fn new(nats: &str, stream: &str, auth: &crate::nats::NatsAuth) -> Self {
        let defaults = JetStreamConfig::default();
        Self {
            nats: nats.to_owned(),
            stream: stream.to_owned(),
            replicas: defaults.replicas,
            partitions: defaults.partitions,
            auth: auth.clone(),
        }
    }
}

/// How a store is opened (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A node's.
    Node,
    /// The tools' reads; `keys`: open personal fields with the tenants' keys.
    Read {
        /// Whether to read the keys.
        keys: bool,
    },
    /// Payloads as stored.
    Raw,
    /// Writing, unsealed.
    Write,
}

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The store (or its keys) refused.
    #[error(transparent)]
    Store(#[from] weft_events::Error),
    /// The JetStream store refused.
    #[error(transparent)]
    JetStream(#[from] jetstream::OpenError),
    /// NATS could not be reached.
    #[error(transparent)]
    Connect(#[from] crate::nats::ConnectError),
    /// Opening on the blocking pool failed.
    #[error("opening the store: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// An opened store: what it can do depends on the [`Mode`] it was opened in.
#[derive(Clone)]
pub enum Opened {
    /// [`Mode::Node`] on SQLite.
    Sqlite(Sealed<SqliteStore>),
    /// [`Mode::Node`] on JetStream.
    JetStream(Sealed<JetStreamStore>),
    /// [`Mode::Read`] or [`Mode::Raw`].
    Reader(Arc<dyn EventRead>),
    /// [`Mode::Write`]; `sqlite` is the store again when it must be closed.
    Writer {
        /// The store.
        store: Arc<dyn EventStore>,
        /// The SQLite store, to close.
        sqlite: Option<SqliteStore>,
    },
}

impl Options {
    /// The keys' file of a SQLite store.
    fn keys_path(&self) -> PathBuf {
        self.keys.clone().unwrap_or_else(|| keys::default_path(&self.sqlite))
    }

    /// What the store is, for people: `sqlite:<path>` or `jetstream:<urls>/<stream>`.
    pub fn describe(&self) -> String {
        match &self.jetstream {
            Some(at) => format!("jetstream:{}/{}", at.nats, at.stream),
            None => format!("sqlite:{}", self.sqlite.display()),
        }
    }
}

/// Opens the store of `options` in `mode`; `client_name` names the NATS connection.
pub async fn open(options: &Options, mode: Mode, client_name: &str) -> Result<Opened, OpenError> {
    if let Some(at) = &options.jetstream {
        let client = crate::nats::connect_with(&at.nats, client_name, &at.auth).await?;
        let config = JetStreamConfig {
            stream: at.stream.clone(),
            replicas: at.replicas,
            partitions: at.partitions,
            ..JetStreamConfig::default()
        };
        let store = JetStreamStore::open(client.clone(), config).await?;
        return Ok(match mode {
            Mode::Node => {
                Opened::JetStream(Sealed::new(store, Keys::jetstream(client, &at.stream, at.replicas, true).await?))
            }
            Mode::Read { keys: true } => {
                let keys = Keys::jetstream(client, &at.stream, 1, false).await?;
                Opened::Reader(Arc::new(Sealed::new(store, keys)))
            }
            Mode::Read { keys: false } => Opened::Reader(Arc::new(Sealed::new(store, Keys::none()))),
            Mode::Raw => Opened::Reader(Arc::new(store)),
            Mode::Write => Opened::Writer { store: Arc::new(store), sqlite: None },
        });
    }
    let path = options.sqlite.clone();
    Ok(match mode {
        Mode::Node => {
            let store = SqliteStore::open(sqlite::Options::new(&path))?;
            Opened::Sqlite(Sealed::new(store, Keys::sqlite(&options.keys_path())?))
        }
        Mode::Read { keys } => {
            let keys = if keys { Keys::sqlite_read_only(&options.keys_path())? } else { Keys::none() };
            let view = tokio::task::spawn_blocking(move || View::open(&path)).await??;
            Opened::Reader(Arc::new(Sealed::new(view, keys)))
        }
        Mode::Raw => Opened::Reader(Arc::new(tokio::task::spawn_blocking(move || View::open(&path)).await??)),
        Mode::Write => {
            let store = tokio::task::spawn_blocking(move || SqliteStore::open(sqlite::Options::new(path))).await??;
            Opened::Writer { store: Arc::new(store.clone()), sqlite: Some(store) }
        }
    })
}

/// The tenants' keys of the store at `options`: to read (`writable` false; none when the store has none), or
/// to write (made when missing).
pub async fn keys(options: &Options, writable: bool, client_name: &str) -> Result<Keys, OpenError> {
    if let Some(at) = &options.jetstream {
        let client = crate::nats::connect_with(&at.nats, client_name, &at.auth).await?;
        return Ok(Keys::jetstream(client, &at.stream, at.replicas, writable).await?);
    }
    let path = options.keys_path();
    Ok(if writable { Keys::sqlite(&path)? } else { Keys::sqlite_read_only(&path)? })
}

impl Opened {
    /// Reads of the store.
    pub fn reader(&self) -> Arc<dyn EventRead> {
        match self {
            Self::Sqlite(store) => Arc::new(store.clone()),
            Self::JetStream(store) => Arc::new(store.clone()),
            Self::Reader(reader) => reader.clone(),
            Self::Writer { store, .. } => store.clone(),
        }
    }

    /// The store for reads and writes; `None` for a reader.
    pub fn store(&self) -> Option<Arc<dyn EventStore>> {
        match self {
            Self::Sqlite(store) => Some(Arc::new(store.clone())),
            Self::JetStream(store) => Some(Arc::new(store.clone())),
            Self::Reader(_) => None,
            Self::Writer { store, .. } => Some(store.clone()),
        }
    }

    /// Where tenants are erased: a node's store.
    pub fn eraser(&self) -> Option<Arc<dyn Erase>> {
        match self {
            Self::Sqlite(store) => Some(Arc::new(store.clone())),
            Self::JetStream(store) => Some(Arc::new(store.clone())),
            _ => None,
        }
    }

    /// What the store is, for a node's first log line.
    pub fn describe(&self, options: &Options) -> String {
        match self {
            Self::JetStream(store) => {
                let config = store.inner().config();
                format!("JetStream stream {} ({} replicas)", config.stream, config.replicas)
            }
            _ => match &options.jetstream {
                Some(at) => format!("JetStream stream {}", at.stream),
                None => format!("SQLite {}", options.sqlite.display()),
            },
        }
    }

    /// Waits for every append and closes the store's files (SQLite).
    pub async fn close(self) -> Result<(), weft_events::Error> {
        match self {
            Self::Sqlite(store) => store.inner().close().await,
            Self::Writer { sqlite: Some(store), .. } => store.close().await,
            _ => Ok(()),
        }
    }
}
