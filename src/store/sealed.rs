//! A store whose events' personal fields are sealed with their tenant's key ([`weft_events::seal`]), around
//! either backend: appends are sealed on the way in, reads opened on the way out, so the actors, the
//! projections and the tools above see plain payloads (or, for an erased tenant, the [`ERASED`] marker) and
//! only the log holds ciphertext.
//!
//! - An append whose events have personal fields makes the tenant's key first (durably, in [`Keys`]) and is
//!   refused with [`Error::TenantErased`] once the tenant is erased.
//! - Snapshots of the aggregates with personal fields (documents) are neither saved nor loaded: a snapshot
//!   would hold the fields in the clear. Their streams are short; they are folded from their events.
//! - [`Sealed::erase`] destroys the key and appends `tenant.erased` to [`erasures`], which the read models
//!   scrub the tenant's fields on.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use weft_events::domain::DomainEvent;
use weft_events::domain::tenant::{self, erasures};
use weft_events::seal::{self, ERASED, Opening, SEALED, SealError, personal_fields};
use weft_events::{
    Appended, Checkpoint, Direction, Envelope, Error, EventRead, EventWrite, ExpectedVersion, Limits, NewEvent,
    Partition, Snapshot, StreamName, Subscription, Timestamp,
};

use super::keys::{KeyState, Keys};

/// Whether `stream` is of an aggregate whose events have personal fields: its snapshots are not kept.
fn holds_personal(stream: &StreamName) -> bool {
    seal::has_personal_events(stream.as_str().split_once('-').map_or("", |(kind, _)| kind))
}

/// What [`Sealed::erase`] did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Erasure {
    /// The tenant.
    pub tenant: String,
    /// When its key was destroyed (the first time, for a tenant erased before).
    pub erased_at: Timestamp,
    /// Whether a key was destroyed now (false: erased before, or it never had one).
    pub destroyed_key: bool,
    /// The position of its `tenant.erased` event.
    pub position: u64,
}

/// A store with sealed personal fields. Cheap to clone when `S` is.
#[derive(Clone)]
pub struct Sealed<S> {
    inner: S,
    keys: Keys,
}

impl<S> Sealed<S> {
    /// `inner`, sealing with the keys of `keys`.
    pub fn new(inner: S, keys: Keys) -> Self {
        Self { inner, keys }
    }

    /// The store underneath, whose payloads are sealed (for export, which copies them as they are).
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The key store.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }
}

impl<S: EventRead> Sealed<S> {
    /// Opens the sealed fields of `events`: with the tenant's key, or as markers where it is erased
    /// ([`ERASED`]) or not at hand ([`SEALED`]: no key store, or a field sealed under another store's key, as
    /// after `weft events import`). A field that does not open under the right key is corruption.
    async fn open_all(&self, mut events: Vec<Envelope>) -> Result<Vec<Envelope>, Error> {
        let mut states: HashMap<Arc<str>, Option<KeyState>> = HashMap::new();
        for event in &mut events {
            if personal_fields(&event.event_type).is_empty() || !seal::is_sealed(&event.payload) {
                continue;
            }
            if !states.contains_key(&event.tenant) {
                let state = self.keys.lookup(&event.tenant).await?;
                states.insert(event.tenant.clone(), state);
            }
            let how = match &states[&event.tenant] {
                Some(KeyState::Live(key)) => Opening::Key(key),
                Some(KeyState::Erased(_)) => Opening::Marker(ERASED),
                None => Opening::Marker(SEALED),
            };
            let opened = match seal::open(event.event_id, &event.tenant, &event.payload, how) {
                // Sealed under a key this store does not hold (imported from another store): as without keys.
                Err(SealError::WrongKey { .. }) => {
                    seal::open(event.event_id, &event.tenant, &event.payload, Opening::Marker(SEALED))
                }
                other => other,
            };
            match opened {
                Ok(Some(opened)) => event.payload = opened.into(),
                Ok(None) => {}
                Err(e) => {
                    return Err(Error::Corrupt {
                        location: format!("event at position {} ({})", event.position, event.stream),
                        detail: e.to_string(),
                    });
                }
            }
        }
        Ok(events)
    }
}

impl<S: EventRead + EventWrite + Clone> Sealed<S> {
    /// Erases `tenant`: destroys its key (durably) so that the personal fields of its events read as
    /// [`ERASED`] from now on, here and on every node sharing the store, and records `tenant.erased` (once) for
    /// the read models. Again on an erased tenant: finishes an erasure cut short, else changes nothing.
    pub async fn erase(&self, tenant: &str, reason: &str, actor: &str) -> Result<Erasure, Error> {
        weft_events::envelope::check_label("tenant", tenant)
            .map_err(|source| Error::InvalidEvent { index: 0, source })?;
        let (before, erased_at) = self.keys.erase(tenant).await?;
        let stream = erasures();
        let mut from = 1;
        loop {
            let page = self.inner.read_stream(&stream, from, Direction::Forwards, 1000).await?;
            for event in &page {
                if let Ok(tenant::Event::Erased(e)) = tenant::Event::from_envelope(event)
                    && e.tenant == tenant
                {
                    return Ok(Erasure {
                        tenant: tenant.to_owned(),
                        erased_at,
                        destroyed_key: matches!(before, Some(KeyState::Live(_))),
                        position: event.position,
                    });
                }
            }
            match page.last() {
                Some(last) => from = last.version + 1,
                None => break,
            }
        }
        let event = tenant::Event::Erased(tenant::Erased {
            tenant: tenant.to_owned(),
            reason: reason.to_owned(),
            at: erased_at,
        });
        let new = event
            .to_new_event()
            .map_err(|e| Error::Corrupt { location: "tenant.erased".into(), detail: e.to_string() })?
            .tenant(tenant)
            .actor(actor);
        let appended = self.inner.append(&stream, ExpectedVersion::Any, vec![new]).await?;
        Ok(Erasure {
            tenant: tenant.to_owned(),
            erased_at,
            destroyed_key: matches!(before, Some(KeyState::Live(_))),
            position: appended.last_position,
        })
    }
}

/// Erasing a tenant, for the query API (`POST /tenants/{tenant}/erase`) whatever the backend.
#[async_trait]
pub trait Erase: Send + Sync + 'static {
    /// See [`Sealed::erase`].
    async fn erase(&self, tenant: &str, reason: &str, actor: &str) -> Result<Erasure, Error>;

    /// Whether the store knows `tenant`: it has a key (it stored personal fields), live or erased.
    async fn known(&self, tenant: &str) -> Result<bool, Error>;
}

#[async_trait]
impl<S: EventRead + EventWrite + Clone> Erase for Sealed<S> {
    async fn erase(&self, tenant: &str, reason: &str, actor: &str) -> Result<Erasure, Error> {
        Sealed::erase(self, tenant, reason, actor).await
    }

    async fn known(&self, tenant: &str) -> Result<bool, Error> {
        if weft_events::envelope::check_label("tenant", tenant).is_err() {
            return Ok(false);
        }
        Ok(self.keys.lookup(tenant).await?.is_some())
    }
}

#[async_trait]
impl<S: EventRead + Clone> EventRead for Sealed<S> {
    async fn read_stream(
        &self,
        stream: &StreamName,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<Envelope>, Error> {
        let events = self.inner.read_stream(stream, from, direction, limit).await?;
        self.open_all(events).await
    }

    async fn read_all(&self, from: u64, limit: usize) -> Result<Vec<Envelope>, Error> {
        let events = self.inner.read_all(from, limit).await?;
        self.open_all(events).await
    }

    async fn stream_version(&self, stream: &StreamName) -> Result<u64, Error> {
        self.inner.stream_version(stream).await
    }

    async fn head(&self) -> Result<u64, Error> {
        self.inner.head().await
    }

    async fn load_snapshot(&self, stream: &StreamName) -> Result<Option<Snapshot>, Error> {
        if holds_personal(stream) {
            return Ok(None);
        }
        self.inner.load_snapshot(stream).await
    }

    async fn read_latest(&self, stream: &StreamName, limit: usize) -> Result<(Option<Snapshot>, Vec<Envelope>), Error> {
        if holds_personal(stream) {
            return Ok((None, self.read_stream(stream, 1, Direction::Forwards, limit).await?));
        }
        let (snapshot, events) = self.inner.read_latest(stream, limit).await?;
        Ok((snapshot, self.open_all(events).await?))
    }

    async fn load_checkpoint(&self, name: &StreamName) -> Result<Option<Checkpoint>, Error> {
        self.inner.load_checkpoint(name).await
    }

    async fn checkpoint_names(&self) -> Result<Vec<StreamName>, Error> {
        self.inner.checkpoint_names().await
    }

    fn subscribe_all(&self, from: u64) -> Subscription {
        self.inner.subscribe_all(from).through(Arc::new(self.clone()))
    }

    async fn read_partition(
        &self,
        partition: Partition,
        from: u64,
        limit: usize,
    ) -> Result<(Vec<Envelope>, u64), Error> {
        let (events, through) = self.inner.read_partition(partition, from, limit).await?;
        Ok((self.open_all(events).await?, through))
    }

    fn subscribe_partition(&self, partition: Partition, from: u64) -> Subscription {
        self.inner.subscribe_partition(partition, from).through(Arc::new(self.clone()))
    }

    fn limits(&self) -> Limits {
        self.inner.limits()
    }
}

#[async_trait]
impl<S: EventRead + EventWrite + Clone> EventWrite for Sealed<S> {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        mut events: Vec<NewEvent>,
    ) -> Result<Appended, Error> {
        self.inner.limits().check_append(&events)?;
        for (index, event) in events.iter_mut().enumerate() {
            if personal_fields(&event.event_type).is_empty() {
                continue;
            }
            let key = match self.keys.for_append(&event.tenant).await? {
                KeyState::Live(key) => key,
                KeyState::Erased(_) => return Err(Error::TenantErased { tenant: event.tenant.clone() }),
            };
            match seal::seal(&event.event_type, event.event_id, &event.tenant, &event.payload, &key) {
                Ok(Some(sealed)) => event.payload = sealed.into(),
                Ok(None) => {}
                Err(e) => {
                    return Err(Error::Corrupt {
                        location: format!("event {index} of the append"),
                        detail: format!("its personal fields cannot be sealed: {e}"),
                    });
                }
            }
        }
        self.inner.append(stream, expected, events).await
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), Error> {
        if holds_personal(&snapshot.stream) {
            return Ok(());
        }
        self.inner.save_snapshot(snapshot).await
    }

    async fn save_checkpoint(&self, checkpoint: Checkpoint) -> Result<(), Error> {
        self.inner.save_checkpoint(checkpoint).await
    }

    fn combine_from(&self) -> usize {
        self.inner.combine_from()
    }
}

#[cfg(test)]
mod contract {
    // The contract every store keeps, kept by the sealed store that production always runs (over SQLite here;
    // the JetStream backend's contract runs unsealed against a real server in `tests/it/store_jetstream.rs`).
    weft_events::store_contract_tests!(|| async {
        let dir = tempfile::tempdir().unwrap();
        let keys = super::Keys::sqlite(&dir.path().join("keys.db")).unwrap();
        let options = crate::store::sqlite::Options::new(dir.path().join("events.db"));
        let store = super::Sealed::new(crate::store::sqlite::SqliteStore::open(options).unwrap(), keys);
        (store, dir)
    });
}

#[cfg(test)]
mod tests {
    use weft_events::MemoryStore;
    use weft_events::domain::document::{self, Registered};
    use weft_events::domain::ids::DocumentId;

    use super::*;

    fn registration(tenant: &str) -> NewEvent {
        let event = document::Event::Registered(Registered {
            name: "ann.pdf".into(),
            content_type: "application/pdf".into(),
            declared_size_bytes: 1,
            tenant: tenant.into(),
            owner: "user:ann".into(),
            labels: Default::default(),
            at: Timestamp(1),
        });
        event.to_new_event().unwrap().tenant(tenant)
    }

    fn name(e: &Envelope) -> String {
        match document::Event::from_envelope(e).unwrap() {
            document::Event::Registered(r) => r.name,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn sealed_in_the_log_open_above_it_and_erased_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let raw = MemoryStore::default();
        let store = Sealed::new(raw.clone(), Keys::sqlite(&dir.path().join("keys.db")).unwrap());
        let (a, b) = (DocumentId::new().stream(), DocumentId::new().stream());
        store.append(&a, ExpectedVersion::NoStream, vec![registration("acme")]).await.unwrap();
        store.append(&b, ExpectedVersion::NoStream, vec![registration("other")]).await.unwrap();
        let stored = raw.read_all(1, 10).await.unwrap();
        assert!(stored.iter().all(|e| seal::is_sealed(&e.payload)));
        assert!(document::Event::from_envelope(&stored[0]).is_err(), "the log holds no readable name");
        let read = store.read_all(1, 10).await.unwrap();
        assert_eq!((name(&read[0]), name(&read[1])), ("ann.pdf".into(), "ann.pdf".into()));

        let Some(KeyState::Live(key)) = store.keys().lookup("acme").await.unwrap() else { panic!("no key") };
        let erasure = store.erase("acme", "ticket 1", "user:op").await.unwrap();
        assert!(erasure.destroyed_key);
        let read = store.read_all(1, 10).await.unwrap();
        assert_eq!((name(&read[0]), name(&read[1])), (ERASED.into(), "ann.pdf".into()));
        assert_eq!(read[2].event_type.as_ref(), "tenant.erased");
        let c = DocumentId::new().stream();
        let refused = store.append(&c, ExpectedVersion::NoStream, vec![registration("acme")]).await;
        assert_eq!(refused, Err(Error::TenantErased { tenant: "acme".into() }));
        // Erasing again records nothing new; a key store opened afresh (a restart) knows the tenant is erased.
        assert_eq!(store.erase("acme", "again", "user:op").await.unwrap().position, erasure.position);
        let reopened = Sealed::new(raw.clone(), Keys::sqlite(&dir.path().join("keys.db")).unwrap());
        assert_eq!(name(&reopened.read_stream(&a, 1, Direction::Forwards, 10).await.unwrap()[0]), ERASED);
        // Without the key store the fields read as sealed, not as erased.
        let keyless = Sealed::new(raw, Keys::none());
        assert_eq!(name(&keyless.read_stream(&b, 1, Direction::Forwards, 10).await.unwrap()[0]), SEALED);
        // The key file holds no byte run of the erased tenant's key (zeroed, not only unlinked).
        let file = std::fs::read(dir.path().join("keys.db")).unwrap();
        assert!(!file.windows(32).any(|w| w == key.bytes()), "the erased key is still in the file");
    }

    #[tokio::test]
    async fn a_field_under_another_store_s_key_reads_sealed_and_a_changed_one_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let (origin, copy) = (MemoryStore::default(), MemoryStore::default());
        let sealed = Sealed::new(origin.clone(), Keys::sqlite(&dir.path().join("a.db")).unwrap());
        let stream = DocumentId::new().stream();
        sealed.append(&stream, ExpectedVersion::NoStream, vec![registration("acme")]).await.unwrap();
        // The copy's store has its own key for the same tenant (as after an import into a store in use).
        let target = Sealed::new(copy.clone(), Keys::sqlite(&dir.path().join("b.db")).unwrap());
        target
            .append(&DocumentId::new().stream(), ExpectedVersion::NoStream, vec![registration("acme")])
            .await
            .unwrap();
        let stored = origin.read_all(1, 1).await.unwrap().remove(0);
        let new = |payload: bytes::Bytes| NewEvent {
            event_id: stored.event_id,
            event_type: stored.event_type.to_string(),
            schema_version: stored.schema_version,
            tenant: stored.tenant.to_string(),
            correlation_id: None,
            causation_id: None,
            actor: stored.actor.to_string(),
            payload,
            recorded_at: Some(stored.recorded_at),
        };
        copy.append(&stream, ExpectedVersion::NoStream, vec![new(stored.payload.clone())]).await.unwrap();
        assert_eq!(name(&target.read_stream(&stream, 1, Direction::Forwards, 1).await.unwrap()[0]), SEALED);
        // The same bytes with one flipped, read under the key they were sealed with: corruption, not a marker.
        let mut changed = stored.payload.to_vec();
        let at = changed.len() - 30;
        changed[at] ^= 1;
        let damaged = DocumentId::new().stream();
        origin.append(&damaged, ExpectedVersion::NoStream, vec![new(changed.into())]).await.unwrap();
        let read = sealed.read_stream(&damaged, 1, Direction::Forwards, 1).await;
        assert!(matches!(read, Err(Error::Corrupt { .. })), "{read:?}");
    }
}
