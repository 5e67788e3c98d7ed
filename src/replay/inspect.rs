//! What is stored: `weft events streams|cat|show|tail`, and what it means: `weft events state|diff`.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use serde_json::{Value, json};
use weft_actors::Aggregate;
use weft_events::domain::DomainEvent;
use weft_events::{Direction, Envelope, EventRead, StreamName, Timestamp};

use super::{PAGE_EVENTS, event_json, rfc3339};

use super::Error;

/// What the tools here return.
type Result<T, E = Error> = std::result::Result<T, E>;

/// Most streams `streams` lists; past it, it says how many it left out.
pub const MAX_LISTED_STREAMS: usize = 1_000_000;

/// Which streams `streams` lists.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StreamFilter {
    /// Only streams of this aggregate: document, job, agent, workflow, schedule.
    #[arg(long = "type", value_name = "AGGREGATE")]
    pub kind: Option<String>,
    /// Only streams whose last event is this tenant's.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only streams whose name starts with this.
    #[arg(long)]
    pub prefix: Option<String>,
}

/// One stream, as `streams` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StreamRow {
    /// Its name.
    pub stream: String,
    /// Its aggregate (the name's first part).
    #[serde(rename = "type")]
    pub kind: String,
    /// Its last version: how many events it has.
    pub version: u64,
    /// The tenant of its last event.
    pub tenant: String,
    /// The type of its last event.
    pub last_event_type: String,
    /// When its last event was recorded (RFC 3339).
    pub last_change: String,
    /// The position of its last event.
    pub last_position: u64,
}

/// Every stream (that `filter` lets through), in name order, from one pass over the log: the same on every
/// backend, and it costs a read of the whole store.
pub async fn streams(reader: &dyn EventRead, filter: &StreamFilter) -> Result<(Vec<StreamRow>, usize)> {
    let mut rows: BTreeMap<Arc<str>, StreamRow> = BTreeMap::new();
    let mut left_out = 0usize;
    let mut from = 1;
    loop {
        let page = reader.read_all(from, PAGE_EVENTS).await?;
        let Some(last) = page.last() else { break };
        from = last.position + 1;
        for e in &page {
            let name = e.stream.as_str();
            let kind = name.split_once('-').map_or(name, |(kind, _)| kind);
            if filter.kind.as_deref().is_some_and(|k| k != kind)
                || filter.prefix.as_deref().is_some_and(|p| !name.starts_with(p))
            {
                continue;
            }
            let row = StreamRow {
                stream: name.to_owned(),
                kind: kind.to_owned(),
                version: e.version,
                tenant: e.tenant.to_string(),
                last_event_type: e.event_type.to_string(),
                last_change: rfc3339(e.recorded_at),
                last_position: e.position,
            };
            if let Some(existing) = rows.get_mut(name) {
                *existing = row;
            } else if rows.len() < MAX_LISTED_STREAMS {
                rows.insert(Arc::from(name), row);
            } else {
                left_out += 1;
            }
        }
    }
    let rows = rows.into_values().filter(|r| filter.tenant.as_deref().is_none_or(|t| t == r.tenant)).collect();
    Ok((rows, left_out))
}

/// Where `cat` starts or stops: a version, or a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// A version of the stream.
    Version(u64),
    /// A time: events recorded at or before (`--to`) or at or after (`--from`) it.
    Time(Timestamp),
}

impl std::str::FromStr for Bound {
    type Err = String;

    /// A whole number is a version; anything else must be an RFC 3339 time.
    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(version) = text.parse::<u64>() {
            return Ok(Self::Version(version));
        }
        chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| Self::Time(Timestamp(t.timestamp_micros())))
            .map_err(|e| format!("{text:?} is neither a version nor an RFC 3339 time (2026-12-04T09:30:00Z): {e}"))
    }
}

fn after_from(e: &Envelope, from: Option<Bound>) -> bool {
    match from {
        None => true,
        Some(Bound::Version(v)) => e.version >= v,
        Some(Bound::Time(t)) => e.recorded_at >= t,
    }
}

fn before_to(e: &Envelope, to: Option<Bound>) -> bool {
    match to {
        None => true,
        Some(Bound::Version(v)) => e.version <= v,
        Some(Bound::Time(t)) => e.recorded_at <= t,
    }
}

/// Calls `each` with every event of `stream` between the bounds, oldest first, a page at a time.
pub async fn stream_events(
    reader: &dyn EventRead,
    stream: &StreamName,
    from: Option<Bound>,
    to: Option<Bound>,
    mut each: impl FnMut(&Envelope) -> Result<()>,
) -> Result<u64> {
    let mut next = match from {
        Some(Bound::Version(v)) => v.max(1),
        _ => 1,
    };
    let mut count = 0;
    loop {
        let page = reader.read_stream(stream, next, Direction::Forwards, PAGE_EVENTS).await?;
        let Some(last) = page.last() else { return Ok(count) };
        next = last.version + 1;
        for e in &page {
            if !before_to(e, to) {
                return Ok(count);
            }
            if after_from(e, from) {
                each(e)?;
                count += 1;
            }
        }
    }
}

/// The event at `position`, or with event id `id` (a scan of the log).
pub async fn find(reader: &dyn EventRead, key: &str) -> Result<Envelope> {
    if let Ok(position) = key.parse::<u64>() {
        let found = reader.read_all(position, 1).await?;
        return found
            .into_iter()
            .find(|e| e.position == position)
            .ok_or_else(|| Error::NotFound(format!("no event at position {position}")));
    }
    let id: uuid::Uuid =
        key.parse().map_err(|_| Error::Invalid(format!("{key:?} is neither a position nor an event id")))?;
    let mut from = 1;
    loop {
        let page = reader.read_all(from, PAGE_EVENTS).await?;
        let Some(last) = page.last() else { return Err(Error::NotFound(format!("no event has id {id}"))) };
        from = last.position + 1;
        if let Some(found) = page.into_iter().find(|e| e.event_id == id) {
            return Ok(found);
        }
    }
}

/// Which events `tail` prints.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TailFilter {
    /// Only events whose NATS subject (`weft.evt.<tenant>.<aggregate>.<id>.<name>`) matches this pattern, with
    /// `*` and `>` as NATS has them: `weft.evt.*.job.>`, `weft.evt.acme.>`.
    #[arg(long)]
    pub subject: Option<String>,
    /// Only events of this type (`job.completed`), or of these with a `*` at the end (`job.*`).
    #[arg(long = "event-type")]
    pub event_type: Option<String>,
    /// Start at this position instead of at the next new event (1: the whole log, then live).
    #[arg(long)]
    pub from: Option<u64>,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
}

impl TailFilter {
    /// Whether it lets `e` through.
    pub fn admits(&self, e: &Envelope) -> bool {
        let subject_ok =
            self.subject.as_deref().is_none_or(|p| crate::bus::matches(p, &crate::protocol::event_subject(e)));
        let type_ok = self.event_type.as_deref().is_none_or(|t| match t.strip_suffix('*') {
            Some(prefix) => e.event_type.starts_with(prefix),
            None => &*e.event_type == t,
        });
        subject_ok && type_ok
    }
}

/// Follows the whole log, like `tail -f`: calls `each` with every event `filter` admits, as it commits.
pub async fn tail(
    reader: &dyn EventRead,
    filter: &TailFilter,
    mut each: impl FnMut(&Envelope) -> Result<()>,
) -> Result<()> {
    if let Some(pattern) = &filter.subject {
        crate::bus::check_subject(pattern, true).map_err(|e| Error::Invalid(format!("--subject: {e}")))?;
    }
    let from = match filter.from {
        Some(from) => from,
        None => reader.head().await? + 1,
    };
    let mut subscription = reader.subscribe_all(from);
    let mut printed = 0;
    while filter.count.is_none_or(|count| printed < count) {
        let batch = subscription.next_batch().await?;
        for e in &batch {
            if filter.admits(e) && filter.count.is_none_or(|count| printed < count) {
                each(e)?;
                printed += 1;
            }
        }
    }
    Ok(())
}

/// An aggregate's state as JSON after the events of its stream up to `at`, with the version and time it
/// reflects.
pub async fn state(reader: &dyn EventRead, stream: &StreamName, at: Option<Bound>) -> Result<Value> {
    let kind = stream.as_str().split_once('-').map_or("", |(kind, _)| kind);
    match kind {
        weft_actors::document::Document::KIND => fold::<weft_actors::document::Document>(reader, stream, at).await,
        weft_actors::job::Job::KIND => fold::<weft_actors::job::Job>(reader, stream, at).await,
        weft_actors::agent::Agent::KIND => fold::<weft_actors::agent::Agent>(reader, stream, at).await,
        weft_actors::workflow::Workflow::KIND => fold::<weft_actors::workflow::Workflow>(reader, stream, at).await,
        weft_actors::schedule::Schedule::KIND => fold::<weft_actors::schedule::Schedule>(reader, stream, at).await,
        weft_actors::trigger::Trigger::KIND => fold::<weft_actors::trigger::Trigger>(reader, stream, at).await,
        _ => Err(Error::Invalid(format!(
            "{stream} is not the stream of an aggregate (document, job, agent, workflow, schedule, trigger)"
        ))),
    }
}

async fn fold<A: Aggregate>(reader: &dyn EventRead, stream: &StreamName, at: Option<Bound>) -> Result<Value> {
    let mut state = A::default();
    let mut version = 0;
    let mut recorded_at = None;
    stream_events(reader, stream, None, at, |e| {
        let event = A::Event::from_envelope(e).map_err(|err| Error::Undecodable {
            stream: stream.to_string(),
            version: e.version,
            position: e.position,
            reason: err.to_string(),
        })?;
        state = std::mem::take(&mut state).evolve(&event);
        version = e.version;
        recorded_at = Some(e.recorded_at);
        Ok(())
    })
    .await?;
    if version == 0 {
        return Err(Error::NotFound(format!("{stream} has no events{}", if at.is_some() { " by then" } else { "" })));
    }
    if let Some(Bound::Version(wanted)) = at
        && wanted > version
    {
        return Err(Error::NotFound(format!("{stream} is at version {version}: it has no version {wanted}")));
    }
    Ok(json!({
        "stream": stream.as_str(),
        "version": version,
        "recorded_at": recorded_at.map(rfc3339),
        "state": serde_json::to_value(&state)?,
    }))
}

/// What changed between two states: one entry per changed leaf, `{"path", "before", "after"}`, paths as JSON
/// pointers (`/steps/0/status`). A field that appears or goes has `null` on the other side.
pub fn diff(before: &Value, after: &Value) -> Vec<Value> {
    let mut changes = Vec::new();
    walk("", before, after, &mut changes);
    changes
}

fn walk(path: &str, before: &Value, after: &Value, changes: &mut Vec<Value>) {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            let keys: std::collections::BTreeSet<&String> = b.keys().chain(a.keys()).collect();
            for key in keys {
                let null = Value::Null;
                let escaped = key.replace('~', "~0").replace('/', "~1");
                walk(&format!("{path}/{escaped}"), b.get(key).unwrap_or(&null), a.get(key).unwrap_or(&null), changes);
            }
        }
        (Value::Array(b), Value::Array(a)) => {
            for i in 0..b.len().max(a.len()) {
                let null = Value::Null;
                walk(&format!("{path}/{i}"), b.get(i).unwrap_or(&null), a.get(i).unwrap_or(&null), changes);
            }
        }
        (b, a) if b == a => {}
        (b, a) => changes.push(json!({"path": path, "before": b, "after": a})),
    }
}

/// Writes `e` as one JSON line.
pub fn write_json_line(out: &mut impl Write, e: &Envelope) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, &event_json(e))?;
    out.write_all(b"\n")
}

/// Column widths of [`write_table_line`].
const TABLE: [(&str, usize); 6] =
    [("POSITION", 9), ("STREAM", 44), ("VERSION", 7), ("TYPE", 28), ("RECORDED_AT", 27), ("PAYLOAD", 0)];

/// The header of [`write_table_line`]'s table.
pub fn write_table_header(out: &mut impl Write) -> std::io::Result<()> {
    let cells: Vec<String> = TABLE.iter().map(|(name, width)| format!("{name:<width$}")).collect();
    writeln!(out, "{}", cells.join("  ").trim_end())
}

/// Most characters of a payload in a table line.
const TABLE_PAYLOAD_CHARS: usize = 120;

/// Writes `e` as one line of a table with fixed columns (so that it can stream), the payload shortened.
pub fn write_table_line(out: &mut impl Write, e: &Envelope) -> std::io::Result<()> {
    let json = event_json(e);
    let payload = match json.get("payload") {
        Some(payload) => payload.to_string(),
        None => format!("(does not decode: {})", json["payload_error"].as_str().unwrap_or("")),
    };
    let payload: String = if payload.chars().count() > TABLE_PAYLOAD_CHARS {
        payload.chars().take(TABLE_PAYLOAD_CHARS - 1).chain(std::iter::once('…')).collect()
    } else {
        payload
    };
    let cells = [
        e.position.to_string(),
        e.stream.to_string(),
        e.version.to_string(),
        e.event_type.to_string(),
        rfc3339(e.recorded_at),
        payload,
    ];
    let line: Vec<String> = cells.iter().zip(TABLE).map(|(cell, (_, width))| format!("{cell:<width$}")).collect();
    writeln!(out, "{}", line.join("  ").trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diff_lists_each_changed_leaf_with_a_json_pointer() {
        let before = json!({"status": "running", "steps": [{"a": 1}], "gone": true, "same": "x"});
        let after = json!({"status": "done", "steps": [{"a": 1}, {"a": 2}], "same": "x", "new/field": 3});
        assert_eq!(
            diff(&before, &after),
            vec![
                json!({"path": "/gone", "before": true, "after": null}),
                json!({"path": "/new~1field", "before": null, "after": 3}),
                json!({"path": "/status", "before": "running", "after": "done"}),
                json!({"path": "/steps/1", "before": null, "after": {"a": 2}}),
            ]
        );
        assert!(diff(&before, &before).is_empty());
    }

    #[test]
    fn a_bound_is_a_version_or_a_time() {
        assert_eq!("7".parse::<Bound>(), Ok(Bound::Version(7)));
        assert_eq!("1970-01-01T00:00:01Z".parse::<Bound>(), Ok(Bound::Time(Timestamp(1_000_000))));
        assert!("yesterday".parse::<Bound>().unwrap_err().contains("neither a version nor"));
    }
}
