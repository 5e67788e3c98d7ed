//! Events of a document: a file in object storage, from registration to deletion.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ids::{DocumentId, JobId};
use crate::envelope::Timestamp;

/// A client registered a document and may now upload it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Registered {
    /// File name, as the client gave it.
    pub name: String,
    /// MIME type, such as `application/pdf`.
    pub content_type: String,
    /// The most bytes the upload may have.
    pub declared_size_bytes: u64,
    /// The tenant it belongs to.
    pub tenant: String,
    /// Who registered it.
    pub owner: String,
    /// The client's labels (`{"project": "q3"}`), since schema version 2; none on a version-1 event.
    pub labels: BTreeMap<String, String>,
    /// When.
    pub at: Timestamp,
}

/// `document.registered` as schema version 1 wrote it, before labels. Frozen: only [`upcast_registered`]
/// reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredV1 {
    /// See [`Registered::name`].
    pub name: String,
    /// See [`Registered::content_type`].
    pub content_type: String,
    /// See [`Registered::declared_size_bytes`].
    pub declared_size_bytes: u64,
    /// See [`Registered::tenant`].
    pub tenant: String,
    /// See [`Registered::owner`].
    pub owner: String,
    /// See [`Registered::at`].
    pub at: Timestamp,
}

impl From<RegisteredV1> for Registered {
    fn from(v1: RegisteredV1) -> Self {
        let RegisteredV1 { name, content_type, declared_size_bytes, tenant, owner, at } = v1;
        Self { name, content_type, declared_size_bytes, tenant, owner, labels: BTreeMap::new(), at }
    }
}

/// Reads `document.registered` of any schema version as the current [`Registered`]: version 1 had no labels.
pub fn upcast_registered(schema_version: u32, payload: &[u8]) -> Result<Registered, crate::codec::Error> {
    match schema_version {
        1 => crate::codec::decode::<RegisteredV1>(payload).map(Registered::from),
        _ => crate::codec::decode::<Registered>(payload),
    }
}

/// Where the news of an upload came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UploadSource {
    /// An object-created notification of the object store.
    Notification,
    /// The client said it finished.
    Client,
    /// An agent wrote it, as a job step's output.
    Agent,
}

/// The content arrived in object storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Uploaded {
    /// Its size.
    pub size_bytes: u64,
    /// The object store's entity tag or checksum.
    pub etag: String,
    /// Who said so.
    pub source: UploadSource,
    /// When.
    pub at: Timestamp,
}

/// A job step read this document and wrote `child`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DerivativeRecorded {
    /// The document the step wrote.
    pub child: DocumentId,
    /// The job.
    pub job: JobId,
    /// The step's name in the job's workflow.
    pub step: String,
    /// The version of this document the step read (1 for the first upload), since schema version 2; `None`
    /// on a version-1 event.
    #[serde(default)]
    pub version: Option<u32>,
    /// When.
    pub at: Timestamp,
}

/// The document has new content, its next version; the version count went up by one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct VersionAdded {
    /// The new content's size.
    pub size_bytes: u64,
    /// The new content's entity tag or checksum.
    pub etag: String,
    /// The object holding it, since schema version 2: a key of its own (`<tenant>/v/<id>/<slot>`), so the
    /// earlier versions keep their bytes. `None` (every version-1 event): the new content replaced the
    /// document's own key (`<tenant>/<id>`), and the content that was there is gone.
    #[serde(default)]
    pub key: Option<String>,
    /// When.
    pub at: Timestamp,
}

/// The document's labels were changed: `labels` is the whole set from now on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LabelsChanged {
    /// Every label it has now (`{"project": "q3"}`).
    pub labels: BTreeMap<String, String>,
    /// When.
    pub at: Timestamp,
}

/// The document was deleted (softly: its history stays).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Deleted {
    /// Why.
    pub reason: String,
    /// When.
    pub at: Timestamp,
}

super::domain_events! { "document";
    /// See [`Registered`].
    Registered(Registered) = "document.registered", v 2 via upcast_registered,
    /// See [`Uploaded`].
    Uploaded(Uploaded) = "document.uploaded", v 1,
    /// See [`DerivativeRecorded`].
    DerivativeRecorded(DerivativeRecorded) = "document.derivative_recorded", v 2,
    /// See [`VersionAdded`].
    VersionAdded(VersionAdded) = "document.version_added", v 2,
    /// See [`Deleted`].
    Deleted(Deleted) = "document.deleted", v 1,
    /// See [`LabelsChanged`].
    LabelsChanged(LabelsChanged) = "document.labels_changed", v 1,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DomainEvent;
    use crate::domain::tests::round_trip;

    #[test]
    fn a_version_1_registration_reads_as_version_2_without_labels_and_a_newer_one_is_refused() {
        let v1 = RegisteredV1 {
            name: "a.pdf".into(),
            content_type: "application/pdf".into(),
            declared_size_bytes: 10,
            tenant: "acme".into(),
            owner: "ann".into(),
            at: Timestamp(7),
        };
        let stored = |version: u32, payload: Vec<u8>| {
            crate::envelope::NewEvent::new("document.registered", bytes::Bytes::from(payload))
                .schema_version(version)
                .into_envelope(crate::envelope::StreamName::new("document-x").unwrap(), 1, 1, Timestamp(0))
        };
        let read = Event::from_envelope(&stored(1, crate::codec::encode(&v1).unwrap())).unwrap();
        assert_eq!(read, Event::Registered(v1.clone().into()));
        let Event::Registered(read) = read else { unreachable!() };
        assert!(read.labels.is_empty());
        // Version 2 is what this build writes.
        let v2 = Event::Registered(Registered { labels: [("k".to_owned(), "v".to_owned())].into(), ..read });
        let new = v2.to_new_event().unwrap();
        assert_eq!(new.schema_version, 2);
        assert_eq!(Event::from_envelope(&stored(2, new.payload.to_vec())).unwrap(), v2);
        // A version-1 payload claimed as version 2 lacks `labels`: refused, not guessed.
        assert!(Event::from_envelope(&stored(2, crate::codec::encode(&v1).unwrap())).is_err());
        assert!(matches!(
            Event::from_envelope(&stored(3, new.payload.to_vec())),
            Err(crate::domain::DecodeError::UnknownVersion { found: 3, known: 2, .. })
        ));
    }

    #[test]
    fn every_document_event_round_trips_with_its_stable_name() {
        let at = Timestamp(7);
        let events: Vec<Event> = vec![
            Registered {
                name: "a.pdf".into(),
                content_type: "application/pdf".into(),
                declared_size_bytes: 10,
                tenant: "acme".into(),
                owner: "user:alice".into(),
                labels: [("project".to_owned(), "q3".to_owned())].into(),
                at,
            }
            .into(),
            Uploaded { size_bytes: 9, etag: "e".into(), source: UploadSource::Notification, at }.into(),
            DerivativeRecorded {
                child: DocumentId::new(),
                job: JobId::new(),
                step: "summarise".into(),
                version: Some(2),
                at,
            }
            .into(),
            VersionAdded { size_bytes: 3, etag: "f".into(), key: Some("t/v/d/s".into()), at }.into(),
            Deleted { reason: "gdpr".into(), at }.into(),
            LabelsChanged { labels: [("stage".to_owned(), "final".to_owned())].into(), at }.into(),
        ];
        let names: Vec<&str> = events.iter().map(|e| e.event_type()).collect();
        assert_eq!(
            names,
            [
                "document.registered",
                "document.uploaded",
                "document.derivative_recorded",
                "document.version_added",
                "document.deleted",
                "document.labels_changed"
            ]
        );
        for event in events {
            assert_eq!(round_trip(&event), event);
        }
    }

    #[test]
    fn an_unknown_type_or_a_newer_version_is_a_typed_error() {
        use crate::envelope::{NewEvent, StreamName};
        let stored = |e: NewEvent| e.into_envelope(StreamName::new("s").unwrap(), 1, 1, Timestamp(0));
        let unknown = stored(NewEvent::new("document.teleported", vec![0x80]));
        assert!(matches!(Event::from_envelope(&unknown), Err(crate::domain::DecodeError::UnknownType { .. })));
        let newer = stored(NewEvent::new("document.deleted", vec![0x80]).schema_version(9));
        assert!(matches!(
            Event::from_envelope(&newer),
            Err(crate::domain::DecodeError::UnknownVersion { found: 9, .. })
        ));
        let garbage = stored(NewEvent::new("document.deleted", vec![0xc1]));
        assert!(matches!(Event::from_envelope(&garbage), Err(crate::domain::DecodeError::Payload { .. })));
    }
}
