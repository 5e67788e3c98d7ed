//! The document aggregate: a file in object storage, from registration through uploads and new versions to
//! deletion, and the documents derived from it.

use std::collections::BTreeMap;

use weft_events::Timestamp;
use weft_events::domain::document::{
    Deleted, DerivativeRecorded, Event, LabelsChanged, Registered, UploadSource, Uploaded, VersionAdded,
};
use weft_events::domain::ids::{DocumentId, JobId};

use crate::aggregate::Aggregate;

/// The largest document: S3's limit for one PUT, 5 GiB.
pub const MAX_DOCUMENT_BYTES: u64 = 5 * 1024 * 1024 * 1024;

/// Most labels on one document.
pub const MAX_LABELS: usize = 32;

/// Longest file name, content type, owner, tenant, etag, step or reason, in bytes.
pub const MAX_TEXT_BYTES: usize = 1024;

/// What can be asked of a document.
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema, strum::IntoStaticStr,
)]
#[serde(tag = "type", content = "payload", rename_all = "snake_case", deny_unknown_fields)]
#[strum(serialize_all = "snake_case")]
pub enum Command {
    /// Register a new document, to be uploaded.
    Register {
        /// File name.
        name: String,
        /// MIME type, `type/subtype`.
        content_type: String,
        /// The most bytes the upload may have.
        declared_size_bytes: u64,
        /// The tenant.
        tenant: String,
        /// Who registers it.
        owner: String,
        /// Labels to keep with it (`{"project": "q3"}`): at most [`MAX_LABELS`], keys of letters, digits, `.`,
        /// `_`, `-` and `/`, at most 64 bytes; values at most 256 bytes.
        #[serde(default)]
        labels: BTreeMap<String, String>,
        /// When.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
    /// The content is in object storage.
    MarkUploaded {
        /// Its size.
        size_bytes: u64,
        /// Its entity tag or checksum.
        etag: String,
        /// Who said so.
        source: UploadSource,
        /// When.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
    /// A job step read this document and wrote `child`.
    RecordDerivative {
        /// The document written.
        child: DocumentId,
        /// The job.
        job: JobId,
        /// The step.
        step: String,
        /// The version of this document the step read.
        #[serde(default)]
        version: Option<u32>,
        /// When.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
    /// New content: the document's next version.
    AddVersion {
        /// Its size.
        size_bytes: u64,
        /// Its entity tag or checksum.
        etag: String,
        /// The object holding it: a key of its own under `<tenant>/v/<id>/`, so the versions before keep their
        /// bytes; none: it replaced the document's own key (`<tenant>/<id>`), and the content there is gone.
        #[serde(default)]
        key: Option<String>,
        /// When.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
    /// Change the document's labels: `set` adds or replaces labels, `remove` takes labels away (a key it does
    /// not have is no error). The result must keep to the limits of [`Command::Register`]'s labels. A change
    /// that leaves the labels as they are records nothing.
    Label {
        /// Labels to add or replace.
        #[serde(default)]
        set: BTreeMap<String, String>,
        /// Keys of labels to take away.
        #[serde(default)]
        remove: Vec<String>,
        /// When.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
    /// Delete the document (its history stays).
    Delete {
        /// Why.
        reason: String,
        /// When.
        #[serde(default = "Timestamp::now")]
        at: Timestamp,
    },
}

/// Why a document refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(tag = "code", content = "detail", rename_all = "snake_case")]
pub enum Rejection {
    /// The document has not been registered.
    #[error("the document is not registered")]
    NotRegistered,
    /// The document is registered already.
    #[error("the document is registered already")]
    AlreadyRegistered,
    /// The document is deleted.
    #[error("the document is deleted")]
    Deleted,
    /// The content has not finished uploading.
    #[error("the document has not finished uploading")]
    NotUploaded,
    /// A different content was uploaded already; a new content is a new version.
    #[error("the document was uploaded already with etag {etag:?}; add a version instead")]
    AlreadyUploaded {
        /// The etag of the content already there.
        etag: String,
    },
    /// The content is larger than the registration allowed.
    #[error("the content is {size} bytes, over the {declared} bytes declared")]
    OverDeclaredSize {
        /// Its size.
        size: u64,
        /// The declared size.
        declared: u64,
    },
    /// The declared size is zero or over [`MAX_DOCUMENT_BYTES`].
    #[error("a declared size of {size} bytes is not between 1 and {limit}")]
    BadDeclaredSize {
        /// The size given.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A version's object holds other content than recorded: a version's content never changes.
    #[error("version {version}'s object {key:?} was written again; a version's content never changes")]
    VersionRewritten {
        /// The version.
        version: u32,
        /// Its object.
        key: String,
    },
    /// The version named does not exist.
    #[error("the document has no version {version}; it has {versions}")]
    NoSuchVersion {
        /// The version named.
        version: u32,
        /// How many it has.
        versions: u32,
    },
    /// A text field is empty, too long, or malformed.
    #[error("{field} is invalid: {reason}")]
    Invalid {
        /// Which field.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

/// Where a document is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub enum Status {
    /// Never registered.
    #[default]
    Unregistered,
    /// Registered; the upload has not arrived.
    UploadPending,
    /// Its content is in object storage.
    Uploaded,
    /// Deleted.
    Deleted,
}

/// The state of a document.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Document {
    /// Where it is in its life.
    pub status: Status,
    /// Its file name, as registered (kept so a repeated registration can be told from a different one).
    #[serde(default)]
    pub name: String,
    /// The tenant it belongs to.
    pub tenant: String,
    /// Who registered it.
    pub owner: String,
    /// Its MIME type.
    pub content_type: String,
    /// The registration's size limit.
    pub declared_size_bytes: u64,
    /// Its current content's size.
    pub size_bytes: u64,
    /// Its current content's etag.
    pub etag: String,
    /// Contents so far: 1 after the upload, one more per added version.
    pub versions: u32,
    /// Documents derived from it.
    pub derivatives: u32,
    /// Its labels: those it was registered with, as changed since.
    pub labels: BTreeMap<String, String>,
    /// Each version's content, the first upload first.
    #[serde(default)]
    pub contents: Vec<Content>,
}

/// One version's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Content {
    /// Its size.
    pub size_bytes: u64,
    /// Its entity tag or checksum.
    pub etag: String,
    /// Its object, when it has one of its own; `None`: the document's own key.
    pub key: Option<String>,
    /// Whether its bytes are still there: false for a content in the document's own key that a later one
    /// replaced (before versions had keys of their own).
    pub kept: bool,
}

impl Document {
    /// The content of version `version` (from 1), if it has it.
    pub fn content(&self, version: u32) -> Option<&Content> {
        self.contents.get(usize::try_from(version).ok()?.checked_sub(1)?)
    }
}

fn text(field: &'static str, value: &str) -> Result<(), Rejection> {
    let reason = if value.trim().is_empty() {
        "it is empty".to_owned()
    } else if value.len() > MAX_TEXT_BYTES {
        format!("it is {} bytes, over the limit of {MAX_TEXT_BYTES}", value.len())
    } else if value.chars().any(char::is_control) {
        "it holds control characters".to_owned()
    } else {
        return Ok(());
    };
    Err(Rejection::Invalid { field: field.into(), reason })
}

fn labels(labels: &BTreeMap<String, String>) -> Result<(), Rejection> {
    check_labels(labels).map_err(|reason| Rejection::Invalid { field: "labels".into(), reason })
}

/// Checks a set of labels (a document's, or those a selector asks for): at most [`MAX_LABELS`], each key
/// [`is_label_key`], each value at most 256 bytes without control characters. The error says what is wrong.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!("{} labels, over the limit of {MAX_LABELS}", labels.len()));
    }
    for (key, value) in labels {
        check_label_key(key)?;
        if value.len() > 256 || value.chars().any(char::is_control) {
            return Err(format!("the value of {key:?} is over 256 bytes or holds control characters"));
        }
    }
    Ok(())
}

/// Whether `key` can name a label: 1 to 64 of ASCII letters, digits, `.`, `_`, `-` and `/`.
pub fn is_label_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 64 && key.chars().all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
}

/// [`is_label_key`], with the reason when not.
pub fn check_label_key(key: &str) -> Result<(), String> {
    if is_label_key(key) {
        return Ok(());
    }
    Err(format!("{key:?} is not a label key (1 to 64 of letters, digits, `.`, `_`, `-`, `/`)"))
}

fn content_type(value: &str) -> Result<(), Rejection> {
    text("content type", value)?;
    let well_formed = value.split_once('/').is_some_and(|(kind, sub)| {
        let token = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "!#$&^_.+-".contains(c));
        token(kind) && token(sub.split(';').next().unwrap_or("").trim())
    });
    if well_formed {
        Ok(())
    } else {
        Err(Rejection::Invalid { field: "content type".into(), reason: format!("{value:?} is not type/subtype") })
    }
}

impl Document {
    /// Refuses commands to a document that is not registered or is deleted.
    fn live(&self) -> Result<(), Rejection> {
        match self.status {
            Status::Unregistered => Err(Rejection::NotRegistered),
            Status::Deleted => Err(Rejection::Deleted),
            Status::UploadPending | Status::Uploaded => Ok(()),
        }
    }

    fn fits(&self, size: u64) -> Result<(), Rejection> {
        if size > self.declared_size_bytes {
            return Err(Rejection::OverDeclaredSize { size, declared: self.declared_size_bytes });
        }
        Ok(())
    }
}

impl Aggregate for Document {
    const KIND: &'static str = "document";
    /// 2: with each version's content.
    const SNAPSHOT_VERSION: u32 = 2;
    type Command = Command;
    type Event = Event;
    type Rejection = Rejection;

    fn command_name(command: &Command) -> &'static str {
        command.into()
    }

    fn owner(&self) -> Option<&str> {
        (self.status != Status::Unregistered).then_some(self.owner.as_str())
    }

    fn decide(&self, command: &Command) -> Result<Vec<Event>, Rejection> {
        match command {
            Command::Register { name, content_type: kind, declared_size_bytes, tenant, owner, labels: given, at } => {
                if self.status != Status::Unregistered {
                    return Err(Rejection::AlreadyRegistered);
                }
                text("name", name)?;
                content_type(kind)?;
                text("tenant", tenant)?;
                text("owner", owner)?;
                labels(given)?;
                if *declared_size_bytes == 0 || *declared_size_bytes > MAX_DOCUMENT_BYTES {
                    return Err(Rejection::BadDeclaredSize { size: *declared_size_bytes, limit: MAX_DOCUMENT_BYTES });
                }
                Ok(vec![
                    Registered {
                        name: name.clone(),
                        content_type: kind.clone(),
                        declared_size_bytes: *declared_size_bytes,
                        tenant: tenant.clone(),
                        owner: owner.clone(),
                        labels: given.clone(),
                        at: *at,
                    }
                    .into(),
                ])
            }
            Command::MarkUploaded { size_bytes, etag, source, at } => {
                self.live()?;
                text("etag", etag)?;
                if self.status == Status::Uploaded {
                    // Notifications are delivered at least once: the same upload again changes nothing.
                    if *etag == self.etag && *size_bytes == self.size_bytes {
                        return Ok(vec![]);
                    }
                    return Err(Rejection::AlreadyUploaded { etag: self.etag.clone() });
                }
                self.fits(*size_bytes)?;
                Ok(vec![Uploaded { size_bytes: *size_bytes, etag: etag.clone(), source: *source, at: *at }.into()])
            }
            Command::RecordDerivative { child, job, step, version, at } => {
                self.live()?;
                if self.status != Status::Uploaded {
                    return Err(Rejection::NotUploaded);
                }
                text("step", step)?;
                if let Some(version) = *version
                    && (version == 0 || version > self.versions)
                {
                    return Err(Rejection::NoSuchVersion { version, versions: self.versions });
                }
                let derived =
                    DerivativeRecorded { child: *child, job: *job, step: step.clone(), version: *version, at: *at };
                Ok(vec![derived.into()])
            }
            Command::AddVersion { size_bytes, etag, key, at } => {
                self.live()?;
                if self.status != Status::Uploaded {
                    return Err(Rejection::NotUploaded);
                }
                text("etag", etag)?;
                if let Some(key) = key {
                    text("key", key)?;
                    if !key.starts_with(&format!("{}/v/", self.tenant)) {
                        let reason = format!("{key:?} is not a version's key of this document's tenant");
                        return Err(Rejection::Invalid { field: "key".into(), reason });
                    }
                    // A notification delivered again, or a confirmation after it: recorded already.
                    if let Some((index, content)) =
                        self.contents.iter().enumerate().find(|(_, c)| c.key.as_deref() == Some(key))
                    {
                        if content.etag == *etag && content.size_bytes == *size_bytes {
                            return Ok(vec![]);
                        }
                        return Err(Rejection::VersionRewritten { version: index as u32 + 1, key: key.clone() });
                    }
                }
                self.fits(*size_bytes)?;
                let added = VersionAdded { size_bytes: *size_bytes, etag: etag.clone(), key: key.clone(), at: *at };
                Ok(vec![added.into()])
            }
            Command::Label { set, remove, at } => {
                self.live()?;
                let invalid = |reason: String| Err(Rejection::Invalid { field: "labels".into(), reason });
                if set.is_empty() && remove.is_empty() {
                    return invalid("the change sets no label and removes none".into());
                }
                if remove.len() > MAX_LABELS {
                    return invalid(format!("{} keys to remove, over the limit of {MAX_LABELS}", remove.len()));
                }
                if let Some(key) = remove.iter().find(|key| set.contains_key(*key)) {
                    return invalid(format!("{key:?} is both set and removed"));
                }
                for key in remove {
                    check_label_key(key).map_err(|reason| Rejection::Invalid { field: "labels".into(), reason })?;
                }
                let mut changed = self.labels.clone();
                changed.retain(|key, _| !remove.contains(key));
                changed.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
                labels(&changed)?;
                if changed == self.labels {
                    return Ok(vec![]);
                }
                Ok(vec![LabelsChanged { labels: changed, at: *at }.into()])
            }
            Command::Delete { reason, at } => {
                self.live()?;
                text("reason", reason)?;
                Ok(vec![Deleted { reason: reason.clone(), at: *at }.into()])
            }
        }
    }

    fn evolve(mut self, event: &Event) -> Self {
        match event {
            Event::Registered(e) => {
                self.status = Status::UploadPending;
                self.name = e.name.clone();
                self.tenant = e.tenant.clone();
                self.owner = e.owner.clone();
                self.content_type = e.content_type.clone();
                self.declared_size_bytes = e.declared_size_bytes;
                self.labels = e.labels.clone();
            }
            Event::Uploaded(e) => {
                self.status = Status::Uploaded;
                self.size_bytes = e.size_bytes;
                self.etag = e.etag.clone();
                self.versions = 1;
                self.contents = vec![Content { size_bytes: e.size_bytes, etag: e.etag.clone(), key: None, kept: true }];
            }
            Event::DerivativeRecorded(_) => self.derivatives += 1,
            Event::VersionAdded(e) => {
                self.size_bytes = e.size_bytes;
                self.etag = e.etag.clone();
                self.versions += 1;
                // At most one content without a key of its own is kept (this rule keeps it so): the last.
                if e.key.is_none()
                    && let Some(replaced) = self.contents.iter_mut().rev().find(|c| c.key.is_none() && c.kept)
                {
                    replaced.kept = false;
                }
                let content =
                    Content { size_bytes: e.size_bytes, etag: e.etag.clone(), key: e.key.clone(), kept: true };
                self.contents.push(content);
            }
            Event::Deleted(_) => self.status = Status::Deleted,
            Event::LabelsChanged(e) => self.labels = e.labels.clone(),
        }
        self
    }
}

#[cfg(test)]
mod tests;
