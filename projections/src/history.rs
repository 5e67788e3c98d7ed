//! The event history read model for operators: every event of every stream with its metadata and, for the
//! aggregates' events, its payload as JSON. It answers "what happened to this job, in order" without reading
//! the log, and feeds the query API's live updates (each new row of a stream is one change).
//!
//! Table `stream_events (stream, version, position, type, schema_version, recorded_at, tenant, actor,
//! correlation_id, causation_id, event)`, keyed by `(stream, version)`; `event` is the payload as JSON, or
//! `NULL` for events that are not an aggregate's (their payload stays in the log).

use rusqlite::{Transaction, params};
use serde_json::Value;
use weft_events::Envelope;
use weft_events::domain::{DecodeError, DomainEvent, agent, document, job, schedule, workflow};

use crate::{ApplyError, Projection};

/// The history projection.
#[derive(Debug, Default)]
pub struct History;

/// The payload of an aggregate's event as JSON: the variant's fields, without the enum's tag.
fn payload_json<E: DomainEvent + serde::Serialize>(envelope: &Envelope) -> Result<Value, DecodeError> {
    let event = E::from_envelope(envelope)?;
    Ok(match serde_json::to_value(&event) {
        Ok(Value::Object(mut tagged)) if tagged.len() == 1 => {
            tagged.values_mut().next().map(std::mem::take).unwrap_or_default()
        }
        Ok(other) => other,
        Err(_) => Value::Null,
    })
}

/// The event's payload as JSON when its stream is an aggregate's.
pub fn event_json(envelope: &Envelope) -> Result<Option<Value>, DecodeError> {
    let kind = envelope.stream.as_str().split_once('-').map_or("", |(kind, _)| kind);
    Ok(Some(match kind {
        document::Event::AGGREGATE => payload_json::<document::Event>(envelope)?,
        workflow::Event::AGGREGATE => payload_json::<workflow::Event>(envelope)?,
        job::Event::AGGREGATE => payload_json::<job::Event>(envelope)?,
        agent::Event::AGGREGATE => payload_json::<agent::Event>(envelope)?,
        schedule::Event::AGGREGATE => payload_json::<schedule::Event>(envelope)?,
        _ => return Ok(None),
    }))
}

impl Projection for History {
    fn name(&self) -> &'static str {
        "history"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["stream_events"]
    }

    fn create(&self, db: &rusqlite::Connection) -> rusqlite::Result<()> {
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS stream_events (
                 stream TEXT NOT NULL,
                 version INTEGER NOT NULL,
                 position INTEGER NOT NULL,
                 type TEXT NOT NULL,
                 schema_version INTEGER NOT NULL,
                 recorded_at INTEGER NOT NULL,
                 tenant TEXT NOT NULL,
                 actor TEXT NOT NULL,
                 correlation_id TEXT,
                 causation_id TEXT,
                 event TEXT,
                 PRIMARY KEY (stream, version)
             ) WITHOUT ROWID;",
        )
    }

    fn apply(&mut self, tx: &Transaction<'_>, e: &Envelope) -> Result<(), ApplyError> {
        // A stream whose name looks like an aggregate's but whose event is not one of it is still history:
        // it is kept without a payload rather than stopping the projection.
        let event = event_json(e).ok().flatten().map(|v| v.to_string());
        tx.prepare_cached(
            "INSERT INTO stream_events (stream, version, position, type, schema_version, recorded_at, tenant, actor,
                                        correlation_id, causation_id, event)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            e.stream.as_str(),
            e.version as i64,
            e.position as i64,
            &*e.event_type,
            e.schema_version,
            e.recorded_at.0,
            &*e.tenant,
            &*e.actor,
            e.correlation_id.map(|id| id.to_string()),
            e.causation_id.map(|id| id.to_string()),
            event,
        ])?;
        Ok(())
    }
}
