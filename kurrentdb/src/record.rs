//! How a Weft event is kept in KurrentDB, and read back.
//!
//! | Weft                   | KurrentDB                                                                 |
//! |------------------------|---------------------------------------------------------------------------|
//! | `event_id`             | the event id (so KurrentDB's idempotent append applies to Weft's retries) |
//! | `event_type`           | the event type                                                            |
//! | `payload`              | the data, as binary (MessagePack), `content-type` `application/octet-stream` |
//! | `version` (from 1)     | the stream revision (from 0) plus one                                     |
//! | `position` (from 1)    | the event's rank among this store's events in `$all` order (see [`crate::index`]) |
//! | `correlation_id`, `causation_id` | `$correlationId`, `$causationId` in the metadata, where KurrentDB's own projections look |
//! | `tenant`, `actor`, `schema_version`, `recorded_at` | `tenant`, `actor`, `schemaVersion`, `recordedAt` (microseconds since the epoch) in the metadata |
//!
//! The metadata is JSON, so KurrentDB's UI and tools show it. `recordedAt` is written by Weft (the server's
//! own `created` reaches the client cut to whole seconds), which is also what keeps a copied event's time.

use bytes::Bytes;
use kurrentdb::{CurrentRevision, EventData, StreamState};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use weft_events::{Envelope, Error, ExpectedVersion, NewEvent, StreamName, Timestamp};

/// The event type of a snapshot's record.
pub const SNAPSHOT_TYPE: &str = "weft.snapshot";

/// The event type of a checkpoint's record.
pub const CHECKPOINT_TYPE: &str = "weft.checkpoint";

/// An event's metadata, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The request or flow it is part of.
    #[serde(rename = "$correlationId", default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// The command or event that caused it.
    #[serde(rename = "$causationId", default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// Its tenant.
    pub tenant: String,
    /// Who caused it.
    pub actor: String,
    /// Its payload's schema version.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// When it was recorded, in microseconds since the epoch.
    #[serde(rename = "recordedAt")]
    pub recorded_at: i64,
}

/// The record of a new event; `now` is its time unless it brings one (a copied event).
pub fn to_record(event: NewEvent, now: Timestamp) -> EventData {
    let metadata = Metadata {
        correlation_id: event.correlation_id,
        causation_id: event.causation_id,
        tenant: event.tenant,
        actor: event.actor,
        schema_version: event.schema_version,
        recorded_at: event.recorded_at.unwrap_or(now).as_micros(),
    };
    let metadata = serde_json::to_vec(&metadata).expect("metadata of strings and numbers serialises");
    EventData::binary(event.event_type, event.payload).id(event.event_id).metadata(Bytes::from(metadata))
}

/// What is read back of one event, in KurrentDB's terms.
#[derive(Debug, Clone)]
pub struct Stored<'a> {
    /// The KurrentDB stream, for errors.
    pub kurrent_stream: &'a str,
    /// The event id.
    pub id: Uuid,
    /// The stream revision, from 0.
    pub revision: u64,
    /// The event type.
    pub event_type: &'a str,
    /// The data.
    pub data: Bytes,
    /// The custom metadata.
    pub metadata: &'a [u8],
}

/// The Weft event of a stored record of `stream`, at `position`.
pub fn to_envelope(stored: Stored<'_>, stream: StreamName, position: u64) -> Result<Envelope, Error> {
    let corrupt = |detail: String| Error::Corrupt { location: stored.kurrent_stream.to_owned(), detail };
    let metadata: Metadata = serde_json::from_slice(stored.metadata).map_err(|e| {
        corrupt(format!("event {} (revision {}) has metadata Weft cannot read: {e}", stored.id, stored.revision))
    })?;
    let check = |what: &'static str, value: &str| {
        weft_events::envelope::check_label(what, value)
            .map_err(|e| corrupt(format!("event {} (revision {}): {e}", stored.id, stored.revision)))
    };
    check("tenant", &metadata.tenant)?;
    check("actor", &metadata.actor)?;
    weft_events::envelope::check_event_type(stored.event_type)
        .map_err(|e| corrupt(format!("event {} (revision {}): {e}", stored.id, stored.revision)))?;
    Ok(Envelope {
        event_id: stored.id,
        stream,
        version: stored.revision + 1,
        position,
        event_type: stored.event_type.into(),
        schema_version: metadata.schema_version,
        recorded_at: Timestamp(metadata.recorded_at),
        tenant: metadata.tenant.into(),
        correlation_id: metadata.correlation_id,
        causation_id: metadata.causation_id,
        actor: metadata.actor.into(),
        payload: stored.data,
    })
}

/// What KurrentDB is asked to check of a stream before an append.
pub fn stream_state(expected: ExpectedVersion) -> StreamState {
    match expected {
        ExpectedVersion::Any => StreamState::Any,
        ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => StreamState::NoStream,
        ExpectedVersion::Exact(version) => StreamState::StreamRevision(version - 1),
    }
}

/// A stream's Weft version, from what KurrentDB says its revision is.
pub fn version_of(current: CurrentRevision) -> u64 {
    match current {
        CurrentRevision::NoStream => 0,
        CurrentRevision::Current(revision) => revision + 1,
    }
}

/// A snapshot's or checkpoint's record: its state as data, where it is as metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedAt {
    /// The stream version (snapshot) or log position (checkpoint) it reflects.
    pub at: u64,
    /// The state's encoding version (snapshots; 0 for a checkpoint).
    #[serde(rename = "schemaVersion", default)]
    pub schema_version: u32,
}

/// The record of a snapshot or checkpoint.
pub fn to_saved(event_type: &str, at: SavedAt, state: Bytes) -> EventData {
    let metadata = serde_json::to_vec(&at).expect("two numbers serialise");
    EventData::binary(event_type, state).id(Uuid::now_v7()).metadata(Bytes::from(metadata))
}

/// Where a saved record is, from its metadata.
pub fn saved_at(kurrent_stream: &str, metadata: &[u8]) -> Result<SavedAt, Error> {
    serde_json::from_slice(metadata).map_err(|e| Error::Corrupt {
        location: kurrent_stream.to_owned(),
        detail: format!("a saved state's metadata Weft cannot read: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored<'a>(metadata: &'a [u8]) -> Stored<'a> {
        Stored {
            kurrent_stream: "weft.doc-1",
            id: Uuid::from_u128(7),
            revision: 4,
            event_type: "document.uploaded",
            data: Bytes::from_static(b"\x81\xa1a\x01"),
            metadata,
        }
    }

    #[test]
    fn metadata_uses_kurrentdb_names_and_keeps_every_field() {
        let event = NewEvent::new("document.uploaded", &b"\x81\xa1a\x01"[..])
            .tenant("acme")
            .actor("user:alice")
            .schema_version(3)
            .correlation_id(Uuid::from_u128(1))
            .causation_id(Uuid::from_u128(2));
        let metadata = Metadata {
            correlation_id: event.correlation_id,
            causation_id: event.causation_id,
            tenant: event.tenant.clone(),
            actor: event.actor.clone(),
            schema_version: 3,
            recorded_at: 1_700_000_000_123_456,
        };
        let json = serde_json::to_value(&metadata).unwrap();
        assert_eq!(json["$correlationId"], "00000000-0000-0000-0000-000000000001");
        assert_eq!(json["$causationId"], "00000000-0000-0000-0000-000000000002");
        assert_eq!(json["recordedAt"], 1_700_000_000_123_456i64);
        let bytes = serde_json::to_vec(&metadata).unwrap();
        let envelope = to_envelope(stored(&bytes), StreamName::new("doc-1").unwrap(), 42).unwrap();
        assert_eq!(envelope.version, 5, "revision 4 is the fifth event");
        assert_eq!(envelope.position, 42);
        assert_eq!(envelope.event_id, Uuid::from_u128(7));
        assert_eq!(envelope.recorded_at, Timestamp(1_700_000_000_123_456));
        assert_eq!((&*envelope.tenant, &*envelope.actor, envelope.schema_version), ("acme", "user:alice", 3));
        assert_eq!((envelope.correlation_id, envelope.causation_id), (event.correlation_id, event.causation_id));
        assert_eq!(&envelope.payload[..], b"\x81\xa1a\x01");
    }

    #[test]
    fn absent_ids_are_left_out_and_read_back_as_none() {
        let metadata = Metadata {
            correlation_id: None,
            causation_id: None,
            tenant: "default".into(),
            actor: "system".into(),
            schema_version: 1,
            recorded_at: 5,
        };
        let bytes = serde_json::to_vec(&metadata).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("correlation"));
        let envelope = to_envelope(stored(&bytes), StreamName::new("doc-1").unwrap(), 1).unwrap();
        assert_eq!((envelope.correlation_id, envelope.causation_id), (None, None));
    }

    #[test]
    fn a_record_weft_cannot_vouch_for_is_corrupt_and_named() {
        for bad in [&b"not json"[..], br#"{"tenant":"a b","actor":"x","schemaVersion":1,"recordedAt":1}"#, b"{}"] {
            match to_envelope(stored(bad), StreamName::new("doc-1").unwrap(), 1) {
                Err(Error::Corrupt { location, detail }) => {
                    assert_eq!(location, "weft.doc-1");
                    assert!(detail.contains("revision 4"), "{detail}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn expected_versions_map_to_revisions_one_below() {
        assert_eq!(stream_state(ExpectedVersion::Any), StreamState::Any);
        assert_eq!(stream_state(ExpectedVersion::NoStream), StreamState::NoStream);
        assert_eq!(stream_state(ExpectedVersion::Exact(0)), StreamState::NoStream);
        assert_eq!(stream_state(ExpectedVersion::Exact(1)), StreamState::StreamRevision(0));
        assert_eq!(stream_state(ExpectedVersion::Exact(10)), StreamState::StreamRevision(9));
        assert_eq!(version_of(CurrentRevision::NoStream), 0);
        assert_eq!(version_of(CurrentRevision::Current(0)), 1);
        assert_eq!(version_of(CurrentRevision::Current(9)), 10);
    }

    #[test]
    fn saved_states_say_where_they_are() {
        let at = SavedAt { at: 12, schema_version: 2 };
        let bytes = serde_json::to_vec(&at).unwrap();
        assert_eq!(saved_at("weft-snapshot.doc-1", &bytes).unwrap(), at);
        assert!(matches!(saved_at("weft-snapshot.doc-1", b"[]"), Err(Error::Corrupt { .. })));
    }
}
