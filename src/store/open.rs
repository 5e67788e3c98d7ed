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
    /// The SQLite log file (the store unless `jetstream` or `kurrentdb` is given; the keys' default folder
    /// either way).
    pub sqlite: PathBuf,
    /// The JetStream store instead, on these servers.
    pub jetstream: Option<JetStream>,
    /// The KurrentDB store instead (a build with the `kurrentdb` feature).
    pub kurrentdb: Option<KurrentDb>,
    /// The tenants' keys (SQLite, for a SQLite or KurrentDB store): `keys.db` beside `sqlite` when `None`. A
    /// JetStream store keeps its keys in JetStream.
    pub keys: Option<PathBuf>,
}

/// A KurrentDB store's place.
#[derive(Clone, PartialEq, Eq)]
pub struct KurrentDb {
    /// The connection string (`esdb://user:password@host:2113?tls=true&nodePreference=leader`).
    pub connection: String,
    /// The store's namespace in the database (its streams' prefix).
    pub namespace: String,
}

impl KurrentDb {
    /// The servers and namespace, without credentials or options: what logs and messages show.
    pub fn describe(&self) -> String {
        let (scheme, rest) = self.connection.split_once("://").unwrap_or(("esdb", &self.connection));
        let hosts = rest.split(['?', '/']).next().unwrap_or_default();
        let hosts = hosts.rsplit_once('@').map_or(hosts, |(_, hosts)| hosts);
        format!("kurrentdb:{scheme}://{hosts}#{}", self.namespace)
    }
}

/// Never the connection string: it may hold a password.
impl std::fmt::Debug for KurrentDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
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
    /// The KurrentDB store refused.
    #[cfg(feature = "kurrentdb")]
    #[error(transparent)]
    KurrentDb(#[from] weft_kurrentdb::OpenError),
    /// A KurrentDB store was asked of a build without it.
    #[error("this weft was built without KurrentDB; build it with `cargo build --release --features kurrentdb`")]
    NoKurrentDb,
}

/// An opened store: what it can do depends on the [`Mode`] it was opened in.
#[derive(Clone)]
pub enum Opened {
    /// [`Mode::Node`] on SQLite.
    Sqlite(Sealed<SqliteStore>),
    /// [`Mode::Node`] on JetStream.
    JetStream(Sealed<JetStreamStore>),
    /// [`Mode::Node`] on KurrentDB.
    #[cfg(feature = "kurrentdb")]
    KurrentDb(Sealed<weft_kurrentdb::KurrentDbStore>),
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

    /// What the store is, for people: `sqlite:<path>`, `jetstream:<urls>/<stream>` or
    /// `kurrentdb:<servers>#<namespace>`.
    pub fn describe(&self) -> String {
        match (&self.jetstream, &self.kurrentdb) {
            (Some(at), _) => format!("jetstream:{}/{}", at.nats, at.stream),
            (None, Some(at)) => at.describe(),
            (None, None) => format!("sqlite:{}", self.sqlite.display()),
        }
    }
}

/// Opens the store of `options` in `mode`; `client_name` names the NATS connection.
pub async fn open(options: &Options, mode: Mode, client_name: &str) -> Result<Opened, OpenError> {
    if let Some(at) = &options.kurrentdb {
        return open_kurrentdb(options, at, mode).await;
    }
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

/// Opens the KurrentDB store `at`; its keys are a SQLite file, as a SQLite store's are.
#[cfg(feature = "kurrentdb")]
async fn open_kurrentdb(options: &Options, at: &KurrentDb, mode: Mode) -> Result<Opened, OpenError> {
    let kurrent = weft_kurrentdb::Options {
        connection: at.connection.clone(),
        namespace: at.namespace.clone(),
        limits: weft_events::Limits::default(),
    };
    let store = weft_kurrentdb::KurrentDbStore::open(kurrent).await?;
    Ok(match mode {
        Mode::Node => Opened::KurrentDb(Sealed::new(store, Keys::sqlite(&options.keys_path())?)),
        Mode::Read { keys } => {
            let keys = if keys { Keys::sqlite_read_only(&options.keys_path())? } else { Keys::none() };
            Opened::Reader(Arc::new(Sealed::new(store, keys)))
        }
        Mode::Raw => Opened::Reader(Arc::new(store)),
        Mode::Write => Opened::Writer { store: Arc::new(store), sqlite: None },
    })
}

/// A build without the `kurrentdb` feature opens no KurrentDB store.
#[cfg(not(feature = "kurrentdb"))]
async fn open_kurrentdb(_: &Options, _: &KurrentDb, _: Mode) -> Result<Opened, OpenError> {
    Err(OpenError::NoKurrentDb)
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
            #[cfg(feature = "kurrentdb")]
            Self::KurrentDb(store) => Arc::new(store.clone()),
            Self::Reader(reader) => reader.clone(),
            Self::Writer { store, .. } => store.clone(),
        }
    }

    /// The store for reads and writes; `None` for a reader.
    pub fn store(&self) -> Option<Arc<dyn EventStore>> {
        match self {
            Self::Sqlite(store) => Some(Arc::new(store.clone())),
            Self::JetStream(store) => Some(Arc::new(store.clone())),
            #[cfg(feature = "kurrentdb")]
            Self::KurrentDb(store) => Some(Arc::new(store.clone())),
            Self::Reader(_) => None,
            Self::Writer { store, .. } => Some(store.clone()),
        }
    }

    /// Where tenants are erased: a node's store.
    pub fn eraser(&self) -> Option<Arc<dyn Erase>> {
        match self {
            Self::Sqlite(store) => Some(Arc::new(store.clone())),
            Self::JetStream(store) => Some(Arc::new(store.clone())),
            #[cfg(feature = "kurrentdb")]
            Self::KurrentDb(store) => Some(Arc::new(store.clone())),
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
            _ => match (&options.jetstream, &options.kurrentdb) {
                (Some(at), _) => format!("JetStream stream {}", at.stream),
                (None, Some(at)) => format!("KurrentDB {} (keys in {})", at.describe(), options.keys_path().display()),
                (None, None) => format!("SQLite {}", options.sqlite.display()),
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
