//! The event history read model for operators: every event of every stream with its metadata and, for the
//! aggregates' events, its payload as JSON. It answers "what happened to this job, in order" without reading
//! the log, and feeds the query API's live updates (each new row of a stream is one change).
//!
//! Table `stream_events (stream, version, position, type, schema_version, recorded_at, tenant, actor,
//! correlation_id, causation_id, event)`, keyed by `position` (so rows, payloads and all, are appended at the
//! table's end in log order) with a unique index on `(stream, version)` for reading a stream; `event` is the
//! payload as JSON, or `NULL` for events that are not an aggregate's (their payload stays in the log). On
//! `tenant.erased` the personal fields of the tenant's payloads are scrubbed, as the events read from then on.

use rusqlite::{Transaction, params};
use weft_events::Envelope;
use weft_events::domain::{Any, DecodeError};

use crate::{ApplyError, Projection};
use serde_json::Value;

/// The projection's name, as the runner, `/readyz` and `GET /projections/{name}` know it.
pub const NAME: &str = "history";

/// The columns of a history item.
const HISTORY_COLUMNS: &[&str] = &[
    "version",
    "position",
    "type",
    "schema_version",
    "recorded_at",
    "tenant",
    "actor",
    "correlation_id",
    "causation_id",
    "event",
];

/// Up to `limit` events of `stream` after version `after`, with `event` parsed back into JSON.
pub fn rows(db: &rusqlite::Connection, stream: &str, after: i64, limit: usize) -> rusqlite::Result<Vec<Value>> {
    let sql = format!(
        "SELECT {} FROM stream_events WHERE stream = ?1 AND version > ?2 ORDER BY version LIMIT ?3",
        HISTORY_COLUMNS.join(", ")
    );
    let mut items = crate::model::rows(db, &sql, &[&stream, &after, &(limit as i64)], HISTORY_COLUMNS)?;
    for item in &mut items {
        if let Some(text) = item["event"].as_str() {
            item["event"] = serde_json::from_str(text).unwrap_or(Value::Null);
        }
    }
    Ok(items)
}

/// The history projection.
#[derive(Debug, Default)]
pub struct History;

/// The payload of an aggregate's event as JSON text: the variant's fields, without the enums' tags. Serde writes
/// an event as `{"Aggregate":{"Variant":{...}}}`; the text inside the two tags is the payload, so it is cut out
/// of the text rather than built as a tree and written again (a third of the projection's time).
fn payload_json(event: &Any) -> String {
    let text = serde_json::to_string(event).unwrap_or_else(|_| "null".into());
    let untag = |text: &str| -> Option<(usize, usize)> {
        let rest = text.strip_prefix("{\"")?;
        let (tag, payload) = rest.split_once("\":")?;
        let payload = payload.strip_suffix('}')?;
        tag.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
            .then(|| (text.len() - 1 - payload.len(), payload.len()))
    };
    let mut slice = text.as_str();
    for _ in 0..2 {
        match untag(slice) {
            Some((start, len)) => slice = &slice[start..start + len],
            None => break,
        }
    }
    slice.to_owned()
}

/// The event's payload as JSON text when its stream is an aggregate's. The hashes of users' passwords and API
/// keys' secrets are left out.
pub fn event_json(envelope: &Envelope) -> Result<Option<String>, DecodeError> {
    match Any::from_envelope(envelope) {
        Ok(event @ (Any::User(_) | Any::ApiKey(_))) => {
            let mut payload: serde_json::Value = serde_json::from_str(&payload_json(&event)).unwrap_or_default();
            if let Some(fields) = payload.as_object_mut() {
                for field in weft_events::domain::identity::HASH_FIELDS {
                    fields.remove(field);
                }
            }
            Ok(Some(payload.to_string()))
        }
        Ok(event) => Ok(Some(payload_json(&event))),
        Err(DecodeError::UnknownStream { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

impl Projection for History {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["stream_events"]
    }

    fn create(&self, db: &rusqlite::Connection) -> rusqlite::Result<()> {
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS stream_events (
                 stream TEXT NOT NULL,
                 version INTEGER NOT NULL,
                 position INTEGER PRIMARY KEY,
                 type TEXT NOT NULL,
                 schema_version INTEGER NOT NULL,
                 recorded_at INTEGER NOT NULL,
                 tenant TEXT NOT NULL,
                 actor TEXT NOT NULL,
                 correlation_id TEXT,
                 causation_id TEXT,
                 event TEXT
             );
             CREATE UNIQUE INDEX IF NOT EXISTS stream_events_by_stream ON stream_events (stream, version);",
        )
    }

    fn apply(&mut self, tx: &Transaction<'_>, e: &Envelope) -> Result<(), ApplyError> {
        // A stream whose name looks like an aggregate's but whose event is not one of it is still history:
        // it is kept without a payload rather than stopping the projection.
        let event = event_json(e).ok().flatten();
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
        if let Some(tenant) = crate::erased_tenant(e)? {
            scrub(tx, &tenant)?;
        }
        Ok(())
    }
}

/// Replaces the personal fields of `tenant`'s payloads by what they read as once it is erased: a string by
/// the marker, a map by `{}`, an array by `[]`.
fn scrub(tx: &Transaction<'_>, tenant: &str) -> rusqlite::Result<()> {
    for (event_type, fields) in weft_events::seal::PERSONAL {
        for field in *fields {
            let path = format!("$.{field}");
            crate::exec(
                tx,
                "UPDATE stream_events
                 SET event = json_set(event, ?3, CASE json_type(event, ?3)
                     WHEN 'text' THEN ?4 WHEN 'object' THEN json('{}') WHEN 'array' THEN json('[]') ELSE NULL END)
                 WHERE tenant = ?1 AND type = ?2 AND event IS NOT NULL AND json_type(event, ?3) IS NOT NULL",
                params![tenant, event_type, path, weft_events::seal::ERASED],
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use weft_events::domain::DomainEvent;
    use weft_events::domain::document::{Event, Registered, VersionAdded};
    use weft_events::{EventRead, EventWrite};
    use weft_events::{ExpectedVersion, MemoryStore, Timestamp};

    #[tokio::test]
    async fn the_payload_is_the_variant_s_fields_as_json() {
        let store = MemoryStore::default();
        let id = weft_events::domain::ids::DocumentId::new();
        let registered = Registered {
            name: "a \"quoted\" }name{".into(),
            content_type: "text/plain".into(),
            declared_size_bytes: 3,
            tenant: "t".into(),
            owner: "o".into(),
            labels: Default::default(),
            at: Timestamp(5),
        };
        let added = VersionAdded { size_bytes: 4, etag: "e".into(), key: None, at: Timestamp(6) };
        let events: Vec<Event> = vec![registered.clone().into(), added.clone().into()];
        let new = events.iter().map(|e| e.to_new_event().unwrap()).collect();
        store.append(&id.stream(), ExpectedVersion::NoStream, new).await.unwrap();
        let stored = store.read_all(1, 10).await.unwrap();
        let json = |e| serde_json::from_str::<serde_json::Value>(&super::event_json(e).unwrap().unwrap()).unwrap();
        assert_eq!(json(&stored[0]), serde_json::to_value(&registered).unwrap());
        assert_eq!(json(&stored[1]), serde_json::to_value(&added).unwrap());
    }
}
