//! The event envelope: a payload plus the identity and metadata every stored event carries.
//!
//! A caller builds [`NewEvent`]s; the store assigns `version` (per stream, from 1), `position` (global, from 1)
//! and `recorded_at`, and hands back [`Envelope`]s. The payload is opaque bytes here (MessagePack by
//! convention, see [`crate::codec`]) so that the store never needs to know the domain types.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Longest stream name, in bytes. Stream names end up in NATS subjects and file listings; a bound keeps
/// both sane.
pub const MAX_STREAM_NAME_BYTES: usize = 200;

/// Longest event type name, in bytes.
pub const MAX_EVENT_TYPE_BYTES: usize = 128;

/// Longest tenant or actor name, in bytes.
pub const MAX_LABEL_BYTES: usize = 200;

/// A name that breaks the rules for stream names, event types, tenants or actors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("{what} is empty")]
    Empty {
        /// Which kind of name.
        what: &'static str,
    },
    /// The name is longer than its limit.
    #[error("{what} is {len} bytes long, over the limit of {limit}")]
    TooLong {
        /// Which kind of name.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The name holds a character it may not hold.
    #[error("{what} {name:?} holds {found:?}; allowed are {allowed}")]
    BadChar {
        /// Which kind of name.
        what: &'static str,
        /// The name, as given.
        name: String,
        /// The first character that is not allowed.
        found: char,
        /// The characters that are allowed.
        allowed: &'static str,
    },
}

fn check_name(
    what: &'static str,
    name: &str,
    limit: usize,
    allowed: &'static str,
    ok: impl Fn(char) -> bool,
) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { what });
    }
    if name.len() > limit {
        return Err(NameError::TooLong { what, len: name.len(), limit });
    }
    // The common case, every byte ASCII and allowed, is one pass over bytes; chars only to name the culprit.
    if name.bytes().all(|b| b.is_ascii() && ok(char::from(b))) {
        return Ok(());
    }
    let found = name.chars().find(|c| !ok(*c)).expect("some char is not allowed");
    Err(NameError::BadChar { what, name: name.to_owned(), found, allowed })
}

/// The name of a stream: one aggregate instance's history, such as `document-0192f0c4-...`.
///
/// Stream names become tokens of NATS subjects, so they hold only ASCII letters, digits, `-` and `_`. A
/// name is shared, not copied, when cloned: every event of a stream carries one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamName(Arc<str>);

impl StreamName {
    /// Checks and wraps a stream name.
    pub fn new(name: impl AsRef<str>) -> Result<Self, NameError> {
        let name = name.as_ref();
        check_name("stream name", name, MAX_STREAM_NAME_BYTES, "ASCII letters, digits, '-' and '_'", |c| {
            c.is_ascii_alphanumeric() || c == '-' || c == '_'
        })?;
        Ok(Self(Arc::from(name)))
    }

    /// Wraps a name a backend has read back from its own storage, where it was checked before it was
    /// written and a checksum vouches that it is unchanged; skips the check (in release builds) because
    /// reads decode millions of names.
    pub fn from_stored(name: &str) -> Self {
        debug_assert!(Self::new(name).is_ok(), "stored stream name {name:?} breaks the rules");
        Self(Arc::from(name))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for StreamName {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<StreamName> for String {
    fn from(value: StreamName) -> Self {
        value.0.to_string()
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for StreamName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Checks an event type name such as `document.uploaded`: ASCII letters, digits, `.`, `-` and `_`.
pub fn check_event_type(name: &str) -> Result<(), NameError> {
    check_name("event type", name, MAX_EVENT_TYPE_BYTES, "ASCII letters, digits, '.', '-' and '_'", |c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
    })
}

/// Checks a tenant or actor label such as `acme` or `user:alice`: printable ASCII without spaces.
pub fn check_label(what: &'static str, name: &str) -> Result<(), NameError> {
    check_name(what, name, MAX_LABEL_BYTES, "printable ASCII without spaces", |c| c.is_ascii_graphic())
}

/// A point in time, in microseconds since the Unix epoch (UTC).
///
/// Microseconds because that is what SQLite, JetStream and JSON consumers can all keep exactly in an i64.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current wall-clock time. Only stores and the edges of the system call this; aggregates receive
    /// time with their commands.
    pub fn now() -> Self {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Self(i64::try_from(since.as_micros()).unwrap_or(i64::MAX))
    }

    /// Microseconds since the Unix epoch.
    pub fn as_micros(self) -> i64 {
        self.0
    }

    /// This time plus `ms` milliseconds, saturating.
    pub fn plus_millis(self, ms: u64) -> Self {
        Self(self.0.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX).saturating_mul(1000)))
    }
}

/// The tenant of events that name none.
pub const DEFAULT_TENANT: &str = "default";

/// The actor of events that name none: the platform itself.
pub const SYSTEM_ACTOR: &str = "system";

/// An event as a caller hands it to [`crate::EventWrite::append`]: everything but what the store assigns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEvent {
    /// Unique id, UUID v7 (time-ordered) unless the caller has a reason to choose one.
    pub event_id: Uuid,
    /// Stable, past-tense type name, such as `document.uploaded`.
    pub event_type: String,
    /// Version of the payload's schema, from 1; old versions are read through upcasters.
    pub schema_version: u32,
    /// The tenant the event belongs to.
    pub tenant: String,
    /// The request or flow this event is part of.
    pub correlation_id: Option<Uuid>,
    /// The command or event that caused this one.
    pub causation_id: Option<Uuid>,
    /// Who caused it: `user:alice`, `agent:summariser`, `system`.
    pub actor: String,
    /// The encoded payload.
    pub payload: Bytes,
    /// When it was first recorded, for an event copied from another store (`weft events import`): the store
    /// keeps this time instead of its commit time. `None` (the rule) means "now".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded_at: Option<Timestamp>,
}

impl NewEvent {
    /// A new event of `event_type` with a fresh UUID v7, schema version 1, the default tenant and the system
    /// actor; the builder methods below change those.
    pub fn new(event_type: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version: 1,
            tenant: DEFAULT_TENANT.to_owned(),
            correlation_id: None,
            causation_id: None,
            actor: SYSTEM_ACTOR.to_owned(),
            payload: payload.into(),
            recorded_at: None,
        }
    }

    /// Sets the payload schema version.
    pub fn schema_version(mut self, version: u32) -> Self {
        self.schema_version = version;
        self
    }

    /// Sets the tenant.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = tenant.into();
        self
    }

    /// Sets the correlation id.
    pub fn correlation_id(mut self, id: Uuid) -> Self {
        self.correlation_id = Some(id);
        self
    }

    /// Sets the causation id.
    pub fn causation_id(mut self, id: Uuid) -> Self {
        self.causation_id = Some(id);
        self
    }

    /// Sets the actor.
    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = actor.into();
        self
    }

    /// Keeps `at` as the time it was recorded (see [`NewEvent::recorded_at`]).
    pub fn recorded_at(mut self, at: Timestamp) -> Self {
        self.recorded_at = Some(at);
        self
    }

    /// The stored form of this event, once the store has assigned its place and its commit time (which
    /// [`NewEvent::recorded_at`] overrides).
    pub fn into_envelope(self, stream: StreamName, version: u64, position: u64, committed_at: Timestamp) -> Envelope {
        Envelope {
            event_id: self.event_id,
            stream,
            version,
            position,
            event_type: self.event_type.into(),
            schema_version: self.schema_version,
            recorded_at: self.recorded_at.unwrap_or(committed_at),
            tenant: self.tenant.into(),
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            actor: self.actor.into(),
            payload: self.payload,
        }
    }
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique id, UUID v7.
    pub event_id: Uuid,
    /// The stream the event belongs to.
    pub stream: StreamName,
    /// Place in its stream: 1, 2, 3 ... with no gap.
    pub version: u64,
    /// Place in the whole store, assigned at commit: increasing in commit order.
    pub position: u64,
    /// Stable type name, such as `document.uploaded`. Shared between the events that have it.
    pub event_type: Arc<str>,
    /// Version of the payload's schema.
    pub schema_version: u32,
    /// When the store committed it.
    pub recorded_at: Timestamp,
    /// The tenant the event belongs to. Shared between the events that have it.
    pub tenant: Arc<str>,
    /// The request or flow this event is part of.
    pub correlation_id: Option<Uuid>,
    /// The command or event that caused this one.
    pub causation_id: Option<Uuid>,
    /// Who caused it. Shared between the events that have it.
    pub actor: Arc<str>,
    /// The encoded payload.
    pub payload: Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_that_would_break_a_subject_are_refused() {
        assert!(StreamName::new("document-0192f0c4").is_ok());
        for bad in ["", "a.b", "a b", "a*", "a>", "é"] {
            assert!(StreamName::new(bad).is_err(), "{bad:?} was accepted");
        }
        let long = "x".repeat(MAX_STREAM_NAME_BYTES + 1);
        assert_eq!(StreamName::new(long), Err(NameError::TooLong { what: "stream name", len: 201, limit: 200 }));
    }

    #[test]
    fn a_stream_name_is_checked_when_decoded_too() {
        let bytes = rmp_serde::to_vec("a.b").unwrap();
        assert!(rmp_serde::from_slice::<StreamName>(&bytes).is_err());
    }

    #[test]
    fn event_types_and_labels_are_checked() {
        assert!(check_event_type("document.uploaded").is_ok());
        assert!(check_event_type("document uploaded").is_err());
        assert!(check_label("actor", "user:alice").is_ok());
        assert!(check_label("actor", "user alice").is_err());
    }
}
