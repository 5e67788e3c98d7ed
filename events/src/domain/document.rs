//! Events of a document: a file in object storage, from registration to deletion.

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
    /// When.
    pub at: Timestamp,
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
    /// When.
    pub at: Timestamp,
}

/// New content replaced the document's content; the version count went up by one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct VersionAdded {
    /// The new content's size.
    pub size_bytes: u64,
    /// The new content's entity tag or checksum.
    pub etag: String,
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
    Registered(Registered) = "document.registered", v 1,
    /// See [`Uploaded`].
    Uploaded(Uploaded) = "document.uploaded", v 1,
    /// See [`DerivativeRecorded`].
    DerivativeRecorded(DerivativeRecorded) = "document.derivative_recorded", v 1,
    /// See [`VersionAdded`].
    VersionAdded(VersionAdded) = "document.version_added", v 1,
    /// See [`Deleted`].
    Deleted(Deleted) = "document.deleted", v 1,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DomainEvent;
    use crate::domain::tests::round_trip;

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
                at,
            }
            .into(),
            Uploaded { size_bytes: 9, etag: "e".into(), source: UploadSource::Notification, at }.into(),
            DerivativeRecorded { child: DocumentId::new(), job: JobId::new(), step: "summarise".into(), at }.into(),
            VersionAdded { size_bytes: 3, etag: "f".into(), at }.into(),
            Deleted { reason: "gdpr".into(), at }.into(),
        ];
        let names: Vec<&str> = events.iter().map(|e| e.event_type()).collect();
        assert_eq!(
            names,
            [
                "document.registered",
                "document.uploaded",
                "document.derivative_recorded",
                "document.version_added",
                "document.deleted"
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
