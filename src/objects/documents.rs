//! Documents and their objects: registration with an upload URL, confirmation of an upload, download URLs,
//! deletion, and what a storage notification does to a document.
//!
//! Storage is the truth about bytes: a document's recorded size and etag come from a head request, never from
//! a client or the notification itself. That also makes notifications safe to take in any order and any
//! number of times:
//!
//! - `ObjectCreated` heads the object. Gone: skipped (its removal follows). A size or etag other than the
//!   notification's: refused (it is stale or forged). Otherwise a pending document becomes uploaded, an
//!   uploaded one with another etag gains a version, the same etag again changes nothing, and under a deleted
//!   document the object is removed (it came through an upload URL signed before the deletion).
//! - Versions are kept: the first upload goes to the document's own key (`<tenant>/<id>`), each new version to
//!   an object of its own (`<tenant>/v/<id>/<slot>`, a fresh slot per upload URL, which writes once), recorded
//!   with the version (`document.version_added`'s `key`). A download names a version or takes the latest; a
//!   deletion removes every version's object. (A version added before keys of their own replaced the
//!   document's own key: the content it replaced is gone, and its download is `not_found`.)
//! - `ObjectRemoved` heads the object too. Still there: skipped (it was created again after the removal).
//!   Otherwise the document is deleted (once).
//! - A key that is not a document's, or a document never registered: skipped. A key under another tenant than
//!   the document's, or a bucket other than the node's: refused.
//!
//! The commands' ids are derived from the key, the change and the etag, so a repeated notification is a
//! repeated command, which the document answers with its first outcome.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use weft_actors::document::{Command, Document, Rejection, Status};
use weft_actors::host::{self, Execute, Metadata, Outcome};
use weft_actors::process::Gateway;
use weft_events::Timestamp;
use weft_events::domain::document::UploadSource;
use weft_events::domain::ids::{DocumentId, Uuid};

use super::notification::{self, Change, Record};
use super::{
    ObjectInfo, ObjectStore, Presigned, Upload, check_key, check_segment, document_key, is_version_key,
    parse_document_key, version_key,
};
use crate::gateway::BusGateway;

/// The namespace of the command ids derived here (UUID v5).
const COMMANDS: Uuid = Uuid::from_u128(0x5745_4654_0006_4f62_6a65_6374_7353_746f);

/// The actor named on the events notifications cause.
pub const STORAGE_ACTOR: &str = "system:object-storage";

/// Why a document operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// No such document or object.
    #[error("{0}")]
    NotFound(String),
    /// The document refuses it.
    #[error("the document refuses: {0}")]
    Rejected(Rejection),
    /// The document changed meanwhile.
    #[error("{0}")]
    Conflict(String),
    /// Storage, the bus or the store failed; the same request may succeed later.
    #[error("{0}")]
    Unavailable(String),
    /// The tenant is erased.
    #[error("{0}")]
    Erased(String),
}

impl Error {
    /// The error's kind, as the protocol names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::NotFound(_) => "not_found",
            Self::Rejected(_) => "rejected",
            Self::Conflict(_) => "conflict",
            Self::Unavailable(_) => "unavailable",
            Self::Erased(_) => "erased",
        }
    }
}

impl From<super::Error> for Error {
    fn from(error: super::Error) -> Self {
        match error {
            super::Error::NotFound { .. } => Self::NotFound(error.to_string()),
            super::Error::InvalidKey { .. } | super::Error::TooLarge { .. } | super::Error::Body { .. } => {
                Self::Invalid(error.to_string())
            }
            super::Error::Superseded { .. } => Self::Conflict(error.to_string()),
            super::Error::Unavailable(_) => Self::Unavailable(error.to_string()),
        }
    }
}

impl From<host::Error<Rejection>> for Error {
    fn from(error: host::Error<Rejection>) -> Self {
        match error {
            host::Error::Rejected(rejection) => Self::Rejected(rejection),
            host::Error::Conflict { .. } => Self::Conflict(error.to_string()),
            host::Error::Unavailable(message) => Self::Unavailable(message),
            host::Error::Erased(message) => Self::Erased(message),
            host::Error::OtherTenant => Self::NotFound("no such document".into()),
        }
    }
}

/// The object of version `version` of the document (its latest without one).
pub fn content_key(id: DocumentId, state: &Document, version: Option<u32>) -> Result<String, Error> {
    let version = version.unwrap_or(state.versions);
    let content = state
        .content(version)
        .ok_or(Error::Rejected(Rejection::NoSuchVersion { version, versions: state.versions }))?;
    if !content.kept {
        return Err(Error::NotFound(format!(
            "version {version}'s content was replaced by a later one, before each version was kept"
        )));
    }
    Ok(content.key.clone().unwrap_or_else(|| document_key(&state.tenant, id)))
}

/// What a client asks to register.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// The document's id, for a retry that must not register twice; a new one without it.
    pub id: Option<DocumentId>,
    /// File name.
    pub name: String,
    /// MIME type; the upload must declare the same.
    pub content_type: String,
    /// The most bytes the upload may have.
    pub size_bytes: u64,
    /// Labels to keep with the document (see the `register` command).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// A registered document and where to upload it.
#[derive(Debug, Clone, Serialize)]
pub struct Registered {
    /// Its id.
    pub id: DocumentId,
    /// Its object's key.
    pub key: String,
    /// The command's outcome (`repeated` for a retry).
    pub outcome: Outcome,
    /// Where to `PUT` the content.
    pub upload: Presigned,
}

/// What a notification record or a confirmation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", content = "reason", rename_all = "snake_case")]
pub enum Effect {
    /// A pending document is uploaded.
    Uploaded,
    /// An uploaded document has a new version.
    VersionAdded,
    /// The document is deleted.
    Deleted,
    /// The document is deleted: the object that came after was removed.
    Discarded,
    /// It was done already: nothing changed.
    Duplicate,
    /// Nothing to do, for this reason.
    Ignored(&'static str),
}

/// What one record of a notification did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordReport {
    /// Its index in the notification.
    pub index: usize,
    /// Its object's key.
    pub key: String,
    /// What it did.
    #[serde(flatten)]
    pub effect: Option<Effect>,
    /// Why it was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ReportError>,
}

/// A refused record's error, as the protocol shows errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportError {
    /// `invalid`, `rejected`, `unavailable`...
    pub kind: &'static str,
    /// For people.
    pub message: String,
}

/// See the module doc. Cheap to clone.
#[derive(Clone)]
pub struct Documents {
    objects: Arc<dyn ObjectStore>,
    gateway: BusGateway,
    expiry: Duration,
}

fn command_id(what: &str) -> Uuid {
    Uuid::new_v5(&COMMANDS, what.as_bytes())
}

impl Documents {
    /// Documents kept in `objects`, commanded through `gateway`; URLs valid for `expiry`.
    pub fn new(objects: Arc<dyn ObjectStore>, gateway: BusGateway, expiry: Duration) -> Self {
        Self { objects, gateway, expiry }
    }

    /// The object store.
    pub fn objects(&self) -> &Arc<dyn ObjectStore> {
        &self.objects
    }

    async fn execute(
        &self,
        id: DocumentId,
        command_id: Uuid,
        command: Command,
        metadata: Metadata,
    ) -> Result<Outcome, Error> {
        let execute = Execute { command_id, command, expected_version: None, metadata };
        Ok(self.gateway.execute::<Document>(&id.stream(), execute).await?)
    }

    async fn state(&self, id: DocumentId) -> Result<Document, Error> {
        Ok(self.gateway.state::<Document>(&id.stream()).await?)
    }

    /// A document that exists (registered, maybe deleted).
    async fn existing(&self, id: DocumentId) -> Result<Document, Error> {
        let state = self.state(id).await?;
        if state.status == Status::Unregistered {
            return Err(Error::NotFound(format!("no document {id}")));
        }
        Ok(state)
    }

    /// Registers a document for `metadata`'s tenant and signs its upload URL.
    pub async fn register(&self, registration: Registration, mut metadata: Metadata) -> Result<Registered, Error> {
        let tenant = metadata.tenant.clone().unwrap_or_else(|| weft_events::envelope::DEFAULT_TENANT.to_owned());
        check_segment(&tenant)
            .map_err(|reason| Error::Invalid(format!("tenant {tenant:?} cannot prefix keys: {reason}")))?;
        metadata.tenant = Some(tenant.clone());
        let id = registration.id.unwrap_or_default();
        let owner = metadata.actor.clone().unwrap_or_else(|| "anonymous".to_owned());
        let command = Command::Register {
            name: registration.name.clone(),
            content_type: registration.content_type.clone(),
            declared_size_bytes: registration.size_bytes,
            tenant: tenant.clone(),
            owner,
            labels: registration.labels.clone(),
            at: Timestamp::now(),
        };
        let outcome = match self.execute(id, command_id(&format!("register:{id}")), command, metadata).await {
            Ok(outcome) if !outcome.repeated => {
                let key = document_key(&tenant, id);
                let upload = Upload {
                    key: &key,
                    content_type: &registration.content_type,
                    max_bytes: registration.size_bytes,
                    expiry: self.expiry,
                    replaces: None,
                };
                let upload = self.objects.presign_put(upload).await?;
                return Ok(Registered { id, key, outcome, upload });
            }
            Ok(outcome) => outcome,
            // Registered by another request (another command id): the same rules as a repeat.
            Err(Error::Rejected(Rejection::AlreadyRegistered)) => {
                let version = self.gateway.store().stream_version(&id.stream()).await;
                let version = version.map_err(|e| Error::Unavailable(e.to_string()))?;
                Outcome { version, positions: None, repeated: true }
            }
            Err(error) => return Err(error),
        };
        // A repeat: the answer is the stored document's upload, never one built from this request, and only for
        // the same registration from the same tenant.
        let state = self.state(id).await?;
        if state.tenant != tenant {
            return Err(Error::Conflict(format!("document id {id} is taken: choose another id")));
        }
        let differs = [
            ("name", state.name != registration.name),
            ("content_type", state.content_type != registration.content_type),
            ("size_bytes", state.declared_size_bytes != registration.size_bytes),
            ("labels", state.labels != registration.labels),
        ];
        let differs: Vec<&str> = differs.iter().filter(|(_, d)| *d).map(|(field, _)| *field).collect();
        if !differs.is_empty() {
            return Err(Error::Conflict(format!(
                "document {id} is registered with another {}: a repeat must send the same fields",
                differs.join(", ")
            )));
        }
        let (key, upload) = self.upload_for(id, &state).await?;
        Ok(Registered { id, key, outcome, upload })
    }

    /// A new upload URL and the object it writes: for a pending upload, or for a new version of an uploaded
    /// document.
    pub async fn upload_url(&self, id: DocumentId) -> Result<(String, Presigned), Error> {
        let state = self.existing(id).await?;
        self.upload_for(id, &state).await
    }

    /// An upload URL signed from the stored document: its key (the document's own while the upload is
    /// pending; for a new version, an object of its own under `<tenant>/v/<id>/`, so the versions before keep
    /// their bytes), content type and size limit, for no object there yet, so that it writes once.
    async fn upload_for(&self, id: DocumentId, state: &Document) -> Result<(String, Presigned), Error> {
        if state.status == Status::Deleted {
            return Err(Error::Rejected(Rejection::Deleted));
        }
        let key = match state.status {
            Status::Uploaded => version_key(&state.tenant, id, Uuid::now_v7()),
            _ => document_key(&state.tenant, id),
        };
        let upload = Upload {
            key: &key,
            content_type: &state.content_type,
            max_bytes: state.declared_size_bytes,
            expiry: self.expiry,
            replaces: None,
        };
        let presigned = self.objects.presign_put(upload).await?;
        Ok((key, presigned))
    }

    /// Refuses an upload to a deleted document's key. The local store asks before it takes the bytes; S3
    /// cannot ask, and an object that lands under a deleted document is removed when its notification or a
    /// confirmation comes.
    pub async fn check_upload(&self, key: &str) -> Result<(), Error> {
        let Some((_, id)) = parse_document_key(key) else { return Ok(()) };
        match self.state(id).await?.status {
            Status::Deleted => Err(Error::Rejected(Rejection::Deleted)),
            _ => Ok(()),
        }
    }

    /// A download URL of the document's content at `version` (from 1; the current one without it).
    pub async fn download_url(&self, id: DocumentId, version: Option<u32>) -> Result<Presigned, Error> {
        let state = self.existing(id).await?;
        match state.status {
            Status::Deleted => Err(Error::Rejected(Rejection::Deleted)),
            Status::Uploaded => {
                let key = content_key(id, &state, version)?;
                Ok(self.objects.presign_get(&key, self.expiry).await?)
            }
            _ => Err(Error::Rejected(Rejection::NotUploaded)),
        }
    }

    /// Checks the document's object with a head request and records what storage says (the client's
    /// "I have uploaded it", for when no notification comes). `key`: the object of a new version's upload
    /// URL; the document's own without it.
    pub async fn confirm(&self, id: DocumentId, key: Option<&str>) -> Result<Effect, Error> {
        let state = self.existing(id).await?;
        let key = match key {
            Some(key) if parse_document_key(key).is_some_and(|(tenant, of)| of == id && tenant == state.tenant) => {
                key.to_owned()
            }
            Some(key) => return Err(Error::Invalid(format!("{key:?} is not an object of document {id}"))),
            None => document_key(&state.tenant, id),
        };
        let info = match self.objects.head(&key).await {
            Err(super::Error::NotFound { .. }) => {
                return Err(Error::NotFound(format!("no object under {key:?} yet: upload it first")));
            }
            other => other?,
        };
        self.created(id, &key, &state, &info, UploadSource::Client).await
    }

    /// Deletes the document, then its object.
    pub async fn delete(&self, id: DocumentId, reason: &str, metadata: Metadata) -> Result<Effect, Error> {
        let state = self.existing(id).await?;
        let effect = if state.status == Status::Deleted {
            Effect::Duplicate
        } else {
            let command = Command::Delete { reason: reason.to_owned(), at: Timestamp::now() };
            self.execute(id, command_id(&format!("delete:{id}")), command, metadata).await?;
            Effect::Deleted
        };
        // The document first: if removing an object fails, a retry removes it, and the document is gone. Every
        // version's object goes.
        self.objects.delete(&document_key(&state.tenant, id)).await?;
        for key in state.contents.iter().filter_map(|c| c.key.as_deref()) {
            self.objects.delete(key).await?;
        }
        Ok(effect)
    }

    /// What an object's arrival does to its document.
    async fn created(
        &self,
        id: DocumentId,
        key: &str,
        state: &Document,
        info: &ObjectInfo,
        source: UploadSource,
    ) -> Result<Effect, Error> {
        let (command, effect) = match state.status {
            Status::Unregistered => return Ok(Effect::Ignored("no such document")),
            // Written after the deletion, through an upload URL signed before it (S3 cannot revoke one).
            Status::Deleted => {
                self.objects.delete(key).await?;
                return Ok(Effect::Discarded);
            }
            // The current content again. Under a version's object nobody recorded (a new version's upload of
            // the same bytes), that object is removed: it is no version, and would outlive the document.
            Status::Uploaded if state.etag == info.etag && state.size_bytes == info.size_bytes => {
                let recorded = state.contents.iter().any(|c| c.key.as_deref() == Some(key));
                if is_version_key(key) && !recorded {
                    self.objects.delete(key).await?;
                }
                return Ok(Effect::Duplicate);
            }
            // A version's object before the first upload is recorded: its URL was signed for a version.
            Status::UploadPending if is_version_key(key) => return Ok(Effect::Ignored("no upload yet")),
            Status::UploadPending => (
                Command::MarkUploaded {
                    size_bytes: info.size_bytes,
                    etag: info.etag.clone(),
                    source,
                    at: Timestamp::now(),
                },
                Effect::Uploaded,
            ),
            Status::Uploaded => (
                Command::AddVersion {
                    size_bytes: info.size_bytes,
                    etag: info.etag.clone(),
                    key: is_version_key(key).then(|| key.to_owned()),
                    at: Timestamp::now(),
                },
                Effect::VersionAdded,
            ),
        };
        let metadata = Metadata {
            tenant: Some(state.tenant.clone()),
            actor: Some(STORAGE_ACTOR.to_owned()),
            correlation_id: None,
            owner: None,
        };
        let outcome = self.execute(id, command_id(&format!("created:{key}:{}", info.etag)), command, metadata).await?;
        Ok(if outcome.repeated { Effect::Duplicate } else { effect })
    }

    /// Applies a notification (see the module doc), record by record: one refused record does not stop the
    /// others.
    pub async fn notified(&self, body: &[u8]) -> Result<Vec<RecordReport>, notification::Error> {
        let records = notification::parse(body)?;
        let mut reports = Vec::with_capacity(records.len());
        for (index, record) in records {
            let result = self.apply(&record).await;
            if let Err(error) = &result {
                tracing::warn!(key = %record.key, %error, "an object notification was refused");
            }
            let (effect, error) = match result {
                Ok(effect) => (Some(effect), None),
                Err(error) => (None, Some(ReportError { kind: error.kind(), message: error.to_string() })),
            };
            reports.push(RecordReport { index, key: record.key, effect, error });
        }
        Ok(reports)
    }

    async fn apply(&self, record: &Record) -> Result<Effect, Error> {
        if record.bucket != self.objects.bucket() {
            return Err(Error::Invalid(format!(
                "the notification is for bucket {:?}; this node keeps documents in {:?}",
                record.bucket,
                self.objects.bucket()
            )));
        }
        check_key(&record.key)?;
        let Some((tenant, id)) = parse_document_key(&record.key) else {
            return Ok(Effect::Ignored("the key is not a document's"));
        };
        let state = self.state(id).await?;
        if state.status == Status::Unregistered {
            return Ok(Effect::Ignored("no such document"));
        }
        if tenant != state.tenant {
            return Err(Error::Invalid(format!(
                "key {:?} is outside the prefix {:?} of the document's tenant",
                record.key,
                format!("{}/", state.tenant)
            )));
        }
        let head = match self.objects.head(&record.key).await {
            Ok(info) => Some(info),
            Err(super::Error::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        match (record.change, head) {
            (Change::Created, None) => Ok(Effect::Ignored("the object is gone; its removal follows")),
            (Change::Created, Some(info)) => {
                if let Some(size) = record.size_bytes.filter(|s| *s != info.size_bytes) {
                    return Err(Error::Invalid(format!(
                        "the notification says {size} bytes; the object has {} (stale or forged)",
                        info.size_bytes
                    )));
                }
                if let Some(etag) = record.etag.as_ref().filter(|e| **e != info.etag) {
                    return Err(Error::Invalid(format!(
                        "the notification says etag {etag:?}; the object has {:?} (stale or forged)",
                        info.etag
                    )));
                }
                self.created(id, &record.key, &state, &info, UploadSource::Notification).await
            }
            (Change::Removed, Some(_)) => Ok(Effect::Ignored("the object exists again: the removal is stale")),
            (Change::Removed, None) if state.status == Status::Deleted => Ok(Effect::Duplicate),
            (Change::Removed, None) if is_version_key(&record.key) => {
                Ok(Effect::Ignored("a version's object: the document stays"))
            }
            (Change::Removed, None) => {
                let metadata = Metadata {
                    tenant: Some(state.tenant.clone()),
                    actor: Some(STORAGE_ACTOR.to_owned()),
                    correlation_id: None,
                    owner: None,
                };
                let command =
                    Command::Delete { reason: "its object was removed from storage".into(), at: Timestamp::now() };
                let outcome =
                    self.execute(id, command_id(&format!("removed:{}", record.key)), command, metadata).await?;
                Ok(if outcome.repeated { Effect::Duplicate } else { Effect::Deleted })
            }
        }
    }
}
