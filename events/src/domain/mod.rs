//! The events of Weft's aggregates: past-tense facts with stable type names and schema versions.
//!
//! Each aggregate has one module with an `Event` enum whose variants wrap one struct each. A variant is stored
//! as its struct alone (MessagePack, named fields), with the type name (`document.uploaded`) and schema
//! version in the envelope, so an event's type is never read from its payload and adding an optional field
//! keeps old events readable. Names and versions are never changed once written; a change is a new schema
//! version plus an upcaster (`via` in `domain_events!`), which reads each older version into the current
//! struct: `document.registered` v1 (before labels) is the first.
//!
//! - [`ids`]: typed ids and the stream each lives in.
//! - [`document`], [`workflow`], [`job`], [`agent`], [`schedule`], [`trigger`]: the events of each aggregate.
//! - [`tenant`]: the erasures of tenants (see [`crate::seal`]).
//! - [`identity`]: users with passwords and API keys.

use crate::codec;
use crate::envelope::{Envelope, NewEvent};

pub mod agent;
pub mod document;
pub mod identity;
pub mod ids;
pub mod job;
pub mod schedule;
pub mod tenant;
pub mod trigger;
pub mod workflow;

/// Why a stored event could not be read as a domain event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The envelope's type is not one of the aggregate's.
    #[error("{event_type:?} is not an event of a {aggregate}")]
    UnknownType {
        /// The aggregate.
        aggregate: &'static str,
        /// The type found.
        event_type: String,
    },
    /// The payload's schema version is newer than this code knows.
    #[error("{event_type} has schema version {found}, this build reads up to {known}")]
    UnknownVersion {
        /// The event type.
        event_type: String,
        /// The version found.
        found: u32,
        /// The newest version this build reads.
        known: u32,
    },
    /// The stream is not one of any aggregate's (`<kind>-<id>` with a kind this build knows).
    #[error("stream {stream} is not the stream of any aggregate")]
    UnknownStream {
        /// The stream.
        stream: String,
    },
    /// The payload does not decode as the type says.
    #[error("{event_type}: {source}")]
    Payload {
        /// The event type.
        event_type: String,
        /// The codec's error.
        source: codec::Error,
    },
}

/// An event of any of the aggregates, for readers of the whole log that are not one aggregate (operators'
/// tools, checks).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum Any {
    /// A document's.
    Document(document::Event),
    /// A workflow's.
    Workflow(workflow::Event),
    /// A job's.
    Job(job::Event),
    /// An agent's.
    Agent(agent::Event),
    /// A schedule's.
    Schedule(schedule::Event),
    /// A trigger's.
    Trigger(trigger::Event),
    /// A tenant's (its erasure).
    Tenant(tenant::Event),
    /// A user's.
    User(identity::user::Event),
    /// An API key's.
    ApiKey(identity::apikey::Event),
}

impl Any {
    /// Reads a stored event as the event of the aggregate its stream names (`job-<uuid>`: a job's).
    pub fn from_envelope(envelope: &Envelope) -> Result<Self, DecodeError> {
        let kind = envelope.stream.as_str().split_once('-').map_or("", |(kind, _)| kind);
        Ok(match kind {
            document::Event::AGGREGATE => Self::Document(document::Event::from_envelope(envelope)?),
            workflow::Event::AGGREGATE => Self::Workflow(workflow::Event::from_envelope(envelope)?),
            job::Event::AGGREGATE => Self::Job(job::Event::from_envelope(envelope)?),
            agent::Event::AGGREGATE => Self::Agent(agent::Event::from_envelope(envelope)?),
            schedule::Event::AGGREGATE => Self::Schedule(schedule::Event::from_envelope(envelope)?),
            trigger::Event::AGGREGATE => Self::Trigger(trigger::Event::from_envelope(envelope)?),
            tenant::Event::AGGREGATE => Self::Tenant(tenant::Event::from_envelope(envelope)?),
            identity::user::AGGREGATE => Self::User(identity::user::Event::from_envelope(envelope)?),
            identity::apikey::AGGREGATE => Self::ApiKey(identity::apikey::Event::from_envelope(envelope)?),
            _ => return Err(DecodeError::UnknownStream { stream: envelope.stream.as_str().to_owned() }),
        })
    }
}

/// The events of one aggregate.
pub trait DomainEvent: Sized {
    /// The aggregate's name: the first part of its stream names and event types.
    const AGGREGATE: &'static str;

    /// The stable type name of this event, such as `document.uploaded`.
    fn event_type(&self) -> &'static str;

    /// The payload schema version this build writes for this event.
    fn schema_version(&self) -> u32;

    /// The event as a payload, to append.
    fn to_new_event(&self) -> Result<NewEvent, codec::Error>;

    /// Reads a stored event back, upcasting old schema versions.
    fn from_envelope(envelope: &Envelope) -> Result<Self, DecodeError>;
}

/// Reads a payload of any schema version as the current struct: for event types whose every older version
/// reads as the newest (fields only ever added with a default).
pub fn current<T: serde::de::DeserializeOwned>(_schema_version: u32, payload: &[u8]) -> Result<T, codec::Error> {
    codec::decode(payload)
}

/// Defines an aggregate's `Event` enum and its [`DomainEvent`] impl from a list of
/// `Variant(Struct) = "type.name", v VERSION` lines, each optionally followed by `via UPCASTER`: a
/// `fn(schema_version, payload) -> Result<Struct, codec::Error>` that reads the older versions.
macro_rules! domain_events {
    ($aggregate:literal; $( $(#[$doc:meta])* $variant:ident($payload:ty) = $name:literal, v $version:literal $(via $upcast:path)? ),* $(,)?) => {
        /// Every event of this aggregate.
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        pub enum Event {
            $( $(#[$doc])* $variant($payload), )*
        }

        impl Event {
            /// The JSON Schema of each event type's payload: (type name, schema version, schema).
            pub fn payload_schemas() -> Vec<(&'static str, u32, schemars::Schema)> {
                vec![ $( ($name, $version, schemars::schema_for!($payload)), )* ]
            }
        }

        $(
            impl From<$payload> for Event {
                fn from(event: $payload) -> Self {
                    Event::$variant(event)
                }
            }
        )*

        impl $crate::domain::DomainEvent for Event {
            const AGGREGATE: &'static str = $aggregate;

            fn event_type(&self) -> &'static str {
                match self {
                    $( Event::$variant(_) => $name, )*
                }
            }

            fn schema_version(&self) -> u32 {
                match self {
                    $( Event::$variant(_) => $version, )*
                }
            }

            fn to_new_event(&self) -> Result<$crate::envelope::NewEvent, $crate::codec::Error> {
                let payload = match self {
                    $( Event::$variant(event) => $crate::codec::encode(event)?, )*
                };
                Ok($crate::envelope::NewEvent::new(self.event_type(), payload).schema_version(self.schema_version()))
            }

            fn from_envelope(envelope: &$crate::envelope::Envelope) -> Result<Self, $crate::domain::DecodeError> {
                match &*envelope.event_type {
                    $(
                        $name => {
                            if envelope.schema_version > $version {
                                return Err($crate::domain::DecodeError::UnknownVersion {
                                    event_type: $name.into(),
                                    found: envelope.schema_version,
                                    known: $version,
                                });
                            }
                            // Older schema versions go through the variant's upcaster, where it has one.
                            #[allow(unused_variables)]
                            let read: fn(u32, &[u8]) -> Result<$payload, $crate::codec::Error> =
                                $crate::domain::current::<$payload>;
                            $( let read: fn(u32, &[u8]) -> Result<$payload, $crate::codec::Error> = $upcast; )?
                            read(envelope.schema_version, &envelope.payload)
                                .map(Event::$variant)
                                .map_err(|source| $crate::domain::DecodeError::Payload { event_type: $name.into(), source })
                        }
                    )*
                    other => Err($crate::domain::DecodeError::UnknownType {
                        aggregate: $aggregate,
                        event_type: other.to_owned(),
                    }),
                }
            }
        }
    };
}
pub(crate) use domain_events;

#[cfg(test)]
pub(crate) mod tests {
    use super::DomainEvent;
    use crate::envelope::{StreamName, Timestamp};

    /// Stores `event` in an envelope and reads it back.
    pub(crate) fn round_trip<E: DomainEvent + PartialEq + std::fmt::Debug>(event: &E) -> E {
        let stored = event.to_new_event().unwrap().into_envelope(StreamName::new("s").unwrap(), 1, 1, Timestamp(0));
        assert!(stored.event_type.starts_with(E::AGGREGATE), "{} is not a {} event", stored.event_type, E::AGGREGATE);
        crate::envelope::check_event_type(&stored.event_type).unwrap();
        E::from_envelope(&stored).unwrap()
    }
}
