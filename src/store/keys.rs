//! The tenants' keys, which seal their events' personal fields ([`weft_events::seal`]): kept apart from the
//! log, so that destroying one erases the tenant's personal data from every copy of the log at once.
//!
//! - Beside a SQLite store: a SQLite file of its own (`keys.db` in the store's folder by default; a backup of
//!   the log is then no backup of the keys), `secure_delete` on, a rollback journal and a full sync on every
//!   change. A key is created, durably, before the first event it seals is appended.
//! - Beside a JetStream store: the stream `<events stream>_KEYS` (`WEFT_EVENTS_KEYS`; subjects
//!   `weft.keys.<events stream>.<tenant in base64url>`, the last message per subject kept). Not a KV bucket: a bucket refuses the deletion of one message, and destroying a
//!   key is exactly that, done with JetStream's erase (the message overwritten, not only unlinked). Every node
//!   follows the stream, so a tenant erased through one node is erased on all of them.
//!
//! An erased tenant keeps a tombstone (when it was erased): its events' personal fields read as
//! [`weft_events::seal::ERASED`] and new events with personal fields are refused for it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::{DiscardPolicy, StorageType};
use async_trait::async_trait;
use base64::Engine as _;
use futures::StreamExt;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use weft_events::Error;
use weft_events::Timestamp;
use weft_events::seal::TenantKey;

/// What the key store holds for a tenant.
#[derive(Debug, Clone)]
pub enum KeyState {
    /// Its key.
    Live(Arc<TenantKey>),
    /// Erased, at this time: the key is gone.
    Erased(Timestamp),
}

/// One backend of the key store.
#[async_trait]
trait Backend: Send + Sync + 'static {
    /// What it holds for `tenant`.
    async fn get(&self, tenant: &str) -> Result<Option<KeyState>, Error>;
    /// Stores `key` for `tenant` unless it holds something already; returns what it holds after.
    async fn create(&self, tenant: &str, key: TenantKey) -> Result<KeyState, Error>;
    /// Destroys `tenant`'s key (if any) and leaves a tombstone. Returns what was there before.
    async fn erase(&self, tenant: &str, at: Timestamp) -> Result<Option<KeyState>, Error>;
    /// Every tenant it holds a key or a tombstone for.
    async fn tenants(&self) -> Result<Vec<String>, Error>;
}

/// What carrying a key store's keys into another did ([`Keys::carry`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Carried {
    /// Keys stored.
    pub keys: u64,
    /// Erasures recorded (the key destroyed, a tombstone left).
    pub erasures: u64,
    /// Tenants that held the same already.
    pub already_there: u64,
}

/// Why a key could not be carried.
#[derive(Debug, thiserror::Error)]
pub enum CarryError {
    /// The key store failed.
    #[error(transparent)]
    Store(#[from] Error),
    /// The target holds something else for the tenant.
    #[error("{0}")]
    Differs(String),
}

/// The key store, with the keys it has read cached. Cheap to clone.
#[derive(Clone)]
pub struct Keys {
    backend: Option<Arc<dyn Backend>>,
    cache: Arc<Mutex<HashMap<String, KeyState>>>,
    location: Arc<str>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").field("location", &self.location).finish_non_exhaustive()
    }
}

/// The key file beside a SQLite store at `store`: `keys.db` in its folder.
pub fn default_path(store: &Path) -> PathBuf {
    store.parent().map_or_else(|| PathBuf::from("keys.db"), |folder| folder.join("keys.db"))
}

impl Keys {
    fn new(backend: Option<Arc<dyn Backend>>, location: String) -> Self {
        Self { backend, cache: Arc::default(), location: location.into() }
    }

    /// No key store: every sealed field reads as a marker, and nothing may be sealed (a tool run without the
    /// keys).
    pub fn none() -> Self {
        Self::new(None, "no key store".into())
    }

    /// Where the keys are, for messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Opens (creating if missing) the key file at `path`.
    pub fn sqlite(path: &Path) -> Result<Self, Error> {
        let location = path.display().to_string();
        if let Some(folder) = path.parent().filter(|f| !f.as_os_str().is_empty()) {
            std::fs::create_dir_all(folder)
                .map_err(|e| Error::Unavailable { location: location.clone(), reason: e.to_string() })?;
        }
        let conn = Connection::open(path).map_err(|e| sql(&location, e))?;
        conn.execute_batch(
            "PRAGMA journal_mode = DELETE;
             PRAGMA synchronous = FULL;
             PRAGMA secure_delete = ON;
             CREATE TABLE IF NOT EXISTS tenant_keys (
                 tenant TEXT PRIMARY KEY,
                 key_id INTEGER,
                 key BLOB,
                 created_at INTEGER NOT NULL,
                 erased_at INTEGER
             );",
        )
        .map_err(|e| sql(&location, e))?;
        Self::on_connection(conn, location)
    }

    fn on_connection(conn: Connection, location: String) -> Result<Self, Error> {
        conn.busy_timeout(Duration::from_secs(5)).map_err(|e| sql(&location, e))?;
        let backend = SqliteKeys { conn: Arc::new(Mutex::new(conn)), location: location.clone() };
        Ok(Self::new(Some(Arc::new(backend)), location))
    }

    /// Opens the key file at `path` for reading only (a tool beside a running node); without the file, no key
    /// store.
    pub fn sqlite_read_only(path: &Path) -> Result<Self, Error> {
        let location = path.display().to_string();
        if !path.is_file() {
            return Ok(Self::new(None, format!("{location} (missing)")));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| sql(&location, e))?;
        Self::on_connection(conn, location)
    }

    /// Opens (creating if missing) the keys' stream on the JetStream of `client`, and follows it: an erasure
    /// through another node drops the key from this one's cache.
    pub async fn jetstream(
        client: async_nats::Client,
        events_stream: &str,
        replicas: usize,
        create: bool,
    ) -> Result<Self, Error> {
        let names = Names::of(events_stream);
        let location = format!("JetStream stream {}", names.stream);
        let js = async_nats::jetstream::new(client);
        let unavailable = |reason: String| Error::Unavailable { location: location.clone(), reason };
        let stream = match js.get_stream(&names.stream).await {
            Ok(stream) => stream,
            Err(_) if !create => return Ok(Self::new(None, format!("{location} (missing)"))),
            Err(_) => js
                .get_or_create_stream(async_nats::jetstream::stream::Config {
                    name: names.stream.clone(),
                    description: Some("Weft: the tenants' keys (destroyed on erasure)".into()),
                    subjects: vec![format!("{}.*", names.subject)],
                    max_messages_per_subject: 1,
                    discard: DiscardPolicy::Old,
                    storage: StorageType::File,
                    num_replicas: replicas,
                    allow_direct: true,
                    ..Default::default()
                })
                .await
                .map_err(|e| unavailable(format!("creating the stream: {e}")))?,
        };
        let backend = JetStreamKeys { js: js.clone(), stream, names: names.clone(), location: location.clone() };
        let keys = Self::new(Some(Arc::new(backend)), location);
        tokio::spawn(follow(js, names, Arc::downgrade(&keys.cache)));
        Ok(keys)
    }

    /// What the store holds for `tenant`, from the cache or the backend. `None`: no key was ever made for it
    /// here (or there is no key store).
    pub async fn lookup(&self, tenant: &str) -> Result<Option<KeyState>, Error> {
        if let Some(state) = self.cache.lock().expect("key cache").get(tenant) {
            return Ok(Some(state.clone()));
        }
        let Some(backend) = &self.backend else { return Ok(None) };
        let state = backend.get(tenant).await?;
        if let Some(state) = &state {
            self.cache.lock().expect("key cache").insert(tenant.to_owned(), state.clone());
        }
        Ok(state)
    }

    /// The key to seal `tenant`'s new events with, made (durably) if it has none yet; `Erased` if it is erased.
    pub async fn for_append(&self, tenant: &str) -> Result<KeyState, Error> {
        if let Some(state) = self.lookup(tenant).await? {
            return Ok(state);
        }
        let backend = self.backend.as_ref().ok_or_else(|| Error::Unavailable {
            location: self.location.to_string(),
            reason: "no key store to seal personal fields with".into(),
        })?;
        let state = backend.create(tenant, TenantKey::generate()).await?;
        self.cache.lock().expect("key cache").insert(tenant.to_owned(), state.clone());
        Ok(state)
    }

    /// Every tenant this key store holds a key or a tombstone for, in name order.
    pub async fn tenants(&self) -> Result<Vec<String>, Error> {
        let Some(backend) = &self.backend else { return Ok(Vec::new()) };
        let mut tenants = backend.tenants().await?;
        tenants.sort_unstable();
        Ok(tenants)
    }

    /// Puts `state`, another key store's for `tenant`, here: the same key, or the same erasure (this store's key
    /// for the tenant, if any, destroyed). A different key, or an erasure here of a tenant whose key the other
    /// still has, is refused: events sealed with one key cannot be opened with another.
    pub async fn carry(&self, tenant: &str, state: &KeyState, carried: &mut Carried) -> Result<(), CarryError> {
        let backend = self.backend.as_ref().ok_or_else(|| Error::Unavailable {
            location: self.location.to_string(),
            reason: "no key store to carry keys into".into(),
        })?;
        let here = backend.get(tenant).await?;
        match (state, here) {
            (KeyState::Live(key), None) => {
                let made = backend.create(tenant, TenantKey::from_parts(key.id(), *key.bytes())).await?;
                if !same_key(&made, key) {
                    return Err(CarryError::Differs(format!("tenant {tenant:?} got another key here meanwhile")));
                }
                carried.keys += 1;
            }
            (KeyState::Live(key), Some(here)) if same_key(&here, key) => carried.already_there += 1,
            (KeyState::Live(_), Some(KeyState::Live(_))) => {
                return Err(CarryError::Differs(format!(
                    "tenant {tenant:?} has another key in {}: its events could not be opened there",
                    self.location
                )));
            }
            (KeyState::Live(_), Some(KeyState::Erased(_))) => {
                return Err(CarryError::Differs(format!(
                    "tenant {tenant:?} is erased in {}, and its key is still in the source",
                    self.location
                )));
            }
            (KeyState::Erased(_), Some(KeyState::Erased(_))) => carried.already_there += 1,
            (KeyState::Erased(at), _) => {
                backend.erase(tenant, *at).await?;
                carried.erasures += 1;
            }
        }
        self.cache.lock().expect("key cache").remove(tenant);
        Ok(())
    }

    /// Destroys `tenant`'s key, durably, and leaves a tombstone; again on an erased tenant, nothing changes.
    /// Returns what was there before (`None`: the tenant never had a key) and when it was erased (the first
    /// time).
    pub async fn erase(&self, tenant: &str) -> Result<(Option<KeyState>, Timestamp), Error> {
        let backend = self
            .backend
            .as_ref()
            .ok_or_else(|| Error::Unavailable { location: self.location.to_string(), reason: "no key store".into() })?;
        let at = Timestamp::now();
        let before = backend.erase(tenant, at).await?;
        let erased_at = match &before {
            Some(KeyState::Erased(first)) => *first,
            _ => at,
        };
        self.cache.lock().expect("key cache").insert(tenant.to_owned(), KeyState::Erased(erased_at));
        Ok((before, erased_at))
    }
}

/// Whether `state` is `key`.
fn same_key(state: &KeyState, key: &TenantKey) -> bool {
    matches!(state, KeyState::Live(here) if here.id() == key.id() && here.bytes() == key.bytes())
}

fn sql(location: &str, e: rusqlite::Error) -> Error {
    Error::Unavailable { location: location.to_owned(), reason: e.to_string() }
}

struct SqliteKeys {
    conn: Arc<Mutex<Connection>>,
    location: String,
}

impl SqliteKeys {
    /// Runs `f` on the connection off the async threads (a change waits for a full sync).
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, Error> {
        let (conn, location) = (self.conn.clone(), self.location.clone());
        tokio::task::spawn_blocking(move || f(&mut conn.lock().expect("key store connection")))
            .await
            .map_err(|e| Error::Unavailable { location: location.clone(), reason: e.to_string() })?
            .map_err(|e| sql(&location, e))
    }
}

fn read_row(conn: &Connection, tenant: &str) -> rusqlite::Result<Option<KeyState>> {
    conn.query_row("SELECT key_id, key, erased_at FROM tenant_keys WHERE tenant = ?1", [tenant], |row| {
        let (id, key, erased): (Option<i64>, Option<Vec<u8>>, Option<i64>) = (row.get(0)?, row.get(1)?, row.get(2)?);
        Ok(match (erased, id, key.and_then(|k| <[u8; 32]>::try_from(k).ok())) {
            (None, Some(id), Some(bytes)) => KeyState::Live(Arc::new(TenantKey::from_parts(id as u32, bytes))),
            // A row without a readable key is a destroyed one, whatever else it says.
            (erased, ..) => KeyState::Erased(Timestamp(erased.unwrap_or(0))),
        })
    })
    .optional()
}

#[async_trait]
impl Backend for SqliteKeys {
    async fn get(&self, tenant: &str) -> Result<Option<KeyState>, Error> {
        let tenant = tenant.to_owned();
        self.run(move |conn| read_row(conn, &tenant)).await
    }

    async fn create(&self, tenant: &str, key: TenantKey) -> Result<KeyState, Error> {
        let tenant = tenant.to_owned();
        self.run(move |conn| {
            conn.execute(
                "INSERT INTO tenant_keys (tenant, key_id, key, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (tenant) DO NOTHING",
                params![tenant, i64::from(key.id()), key.bytes().as_slice(), Timestamp::now().0],
            )?;
            Ok(read_row(conn, &tenant)?.expect("the row was just written"))
        })
        .await
    }

    async fn tenants(&self) -> Result<Vec<String>, Error> {
        self.run(|conn| {
            let mut statement = conn.prepare("SELECT tenant FROM tenant_keys")?;
            let tenants = statement.query_map([], |row| row.get::<_, String>(0))?;
            tenants.collect()
        })
        .await
    }

    async fn erase(&self, tenant: &str, at: Timestamp) -> Result<Option<KeyState>, Error> {
        let tenant = tenant.to_owned();
        self.run(move |conn| {
            let tx = conn.transaction()?;
            let before = read_row(&tx, &tenant)?;
            if !matches!(before, Some(KeyState::Erased(_))) {
                // `secure_delete` zeroes the key's old bytes in the file.
                tx.execute(
                    "INSERT INTO tenant_keys (tenant, key_id, key, created_at, erased_at) VALUES (?1, NULL, NULL, ?2, ?2)
                     ON CONFLICT (tenant) DO UPDATE SET key_id = NULL, key = NULL, erased_at = ?2",
                    params![tenant, at.0],
                )?;
            }
            tx.commit()?;
            Ok(before)
        })
        .await
    }
}

/// The JetStream names of the keys beside an events stream.
#[derive(Debug, Clone)]
struct Names {
    /// The stream: `<events stream>_KEYS`.
    stream: String,
    /// The first tokens of a key's subject: `weft.keys.<events stream>`.
    subject: String,
}

impl Names {
    fn of(events_stream: &str) -> Self {
        Self { stream: format!("{events_stream}_KEYS"), subject: format!("weft.keys.{events_stream}") }
    }

    fn subject(&self, tenant: &str) -> String {
        format!("{}.{}", self.subject, base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tenant))
    }
}

/// A key or a tombstone, as stored in JetStream.
#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    erased_at: Option<i64>,
}

impl Stored {
    fn state(&self) -> KeyState {
        let bytes = self.key.as_ref().and_then(|k| base64::engine::general_purpose::STANDARD.decode(k).ok());
        match (self.erased_at, self.id, bytes.and_then(|b| <[u8; 32]>::try_from(b).ok())) {
            (None, Some(id), Some(bytes)) => KeyState::Live(Arc::new(TenantKey::from_parts(id, bytes))),
            (erased, ..) => KeyState::Erased(Timestamp(erased.unwrap_or(0))),
        }
    }
}

struct JetStreamKeys {
    js: async_nats::jetstream::Context,
    stream: async_nats::jetstream::stream::Stream,
    names: Names,
    location: String,
}

impl JetStreamKeys {
    fn unavailable(&self, reason: impl std::fmt::Display) -> Error {
        Error::Unavailable { location: self.location.clone(), reason: reason.to_string() }
    }

    /// The last message of `tenant`'s subject: its sequence and what it says.
    async fn last(&self, tenant: &str) -> Result<Option<(u64, KeyState)>, Error> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        match self.stream.get_last_raw_message_by_subject(&self.names.subject(tenant)).await {
            Ok(message) => {
                let stored: Stored = serde_json::from_slice(&message.payload).map_err(|e| Error::Corrupt {
                    location: self.location.clone(),
                    detail: format!("the key of tenant {tenant}: {e}"),
                })?;
                Ok(Some((message.sequence, stored.state())))
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(self.unavailable(e)),
        }
    }

    /// Publishes `stored` on `tenant`'s subject if the subject holds nothing. `Ok(false)`: another node got
    /// there first.
    async fn publish(&self, tenant: &str, stored: &Stored) -> Result<bool, Error> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
        let payload = serde_json::to_vec(stored).map_err(|e| self.unavailable(e))?;
        let ack = self
            .js
            .publish_with_headers(self.names.subject(tenant), headers, payload.into())
            .await
            .map_err(|e| self.unavailable(e))?;
        match ack.await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(false),
            Err(e) => Err(self.unavailable(e)),
        }
    }
}

#[async_trait]
impl Backend for JetStreamKeys {
    async fn get(&self, tenant: &str) -> Result<Option<KeyState>, Error> {
        Ok(self.last(tenant).await?.map(|(_, state)| state))
    }

    async fn create(&self, tenant: &str, key: TenantKey) -> Result<KeyState, Error> {
        let stored = Stored {
            id: Some(key.id()),
            key: Some(base64::engine::general_purpose::STANDARD.encode(key.bytes())),
            erased_at: None,
        };
        if self.publish(tenant, &stored).await? {
            return Ok(KeyState::Live(Arc::new(key)));
        }
        self.get(tenant).await?.ok_or_else(|| self.unavailable(format!("the key of {tenant} vanished")))
    }

    async fn tenants(&self) -> Result<Vec<String>, Error> {
        let prefix = format!("{}.", self.names.subject);
        let subjects = crate::store::jetstream::subjects(&self.stream, format!("{prefix}*"))
            .await
            .map_err(|e| self.unavailable(e))?;
        let tenant = |subject: &str| {
            let encoded = subject.strip_prefix(&prefix)?;
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded).ok()?;
            String::from_utf8(bytes).ok()
        };
        Ok(subjects.iter().filter_map(|subject| tenant(subject)).collect())
    }

    async fn erase(&self, tenant: &str, at: Timestamp) -> Result<Option<KeyState>, Error> {
        loop {
            let last = self.last(tenant).await?;
            if let Some((_, state @ KeyState::Erased(_))) = last {
                return Ok(Some(state));
            }
            // Erase the key's message first (JetStream overwrites it), then leave the tombstone: a crash between
            // leaves no key and no tombstone, which reads as erased and is finished by erasing again.
            if let Some((sequence, _)) = &last {
                self.stream.delete_message(*sequence).await.map_err(|e| self.unavailable(e))?;
            }
            // With the key's message gone the subject holds nothing: a tombstone expects no last message, and
            // loses to a key another node made meanwhile (which is then erased in turn).
            let tombstone = Stored { id: None, key: None, erased_at: Some(at.0) };
            if self.publish(tenant, &tombstone).await? {
                return Ok(last.map(|(_, state)| state));
            }
        }
    }
}

/// Follows the keys' stream: a tombstone written by any node replaces the tenant's cached key. Stops when the
/// key store is dropped.
async fn follow(
    js: async_nats::jetstream::Context,
    names: Names,
    cache: std::sync::Weak<Mutex<HashMap<String, KeyState>>>,
) {
    while cache.strong_count() > 0 {
        let filter = format!("{}.*", names.subject);
        match crate::store::jetstream::follow(&js, &names.stream, filter, DeliverPolicy::New, false).await {
            Ok(mut messages) => {
                while let Some(message) = messages.next().await {
                    let Some(cache) = cache.upgrade() else { return };
                    let Ok(message) = message else { continue };
                    let tenant = message
                        .subject
                        .as_str()
                        .strip_prefix(names.subject.as_str())
                        .and_then(|s| s.strip_prefix('.'))
                        .and_then(|t| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t).ok())
                        .and_then(|t| String::from_utf8(t).ok());
                    let stored = serde_json::from_slice::<Stored>(&message.payload).ok();
                    if let (Some(tenant), Some(stored)) = (tenant, stored) {
                        let state = stored.state();
                        if matches!(state, KeyState::Erased(_)) {
                            cache.lock().expect("key cache").insert(tenant, state);
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot follow the keys' stream; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
