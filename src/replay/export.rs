//! `weft events export` and `weft events import`: the export format, version 1 (`docs/replay.md`).
//!
//! JSON lines. The first line is the header, the last the end line; each line between is one event:
//!
//! ```text
//! {"weft_export":1,"from_position":1}
//! {"position":1,"stream":"document-…","version":1,"event_id":"…","event_type":"document.registered","schema_version":1,"recorded_at":1764840000000000,"tenant":"default","actor":"user:alice","correlation_id":null,"causation_id":null,"payload":"<base64 of the stored bytes>"}
//! {"weft_export_end":{"events":1,"last_position":1}}
//! ```
//!
//! - The payload is the stored bytes (MessagePack), base64: it round-trips byte for byte, whatever its schema
//!   version and whether or not this build can decode it. `recorded_at` is microseconds since the epoch, kept
//!   by the importing store; the event id is kept too.
//! - Nothing in a file depends on when or from where it was made, so exporting a store, importing the file
//!   into an empty store (of either backend) and exporting that gives the same bytes.
//! - The end line says how many events the file holds: a file cut short (a disk full, a copy interrupted) has
//!   no end line, or a last line cut in the middle, and import refuses it naming the line.
//! - Export is resumable: given `--output FILE` that already holds an export, it keeps the events there and
//!   appends those after its last one (and a new end line).
//! - Import is resumable: a stream whose events are already in the store (same event id at the file's first
//!   version of it) is skipped up to the store's version and continued after it. A stream that holds other
//!   events at those versions is a conflict: import refuses the whole file before writing anything, unless told
//!   to skip such streams (`--on-conflict skip`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use weft_events::{Direction, Envelope, EventRead, EventStore, ExpectedVersion, NewEvent, StreamName, Timestamp};

/// The format's version, in the header. A file of a newer version is refused by name.
pub const FORMAT_VERSION: u32 = 1;

/// Appends in flight while importing into a store that commits them in the order they were asked for (the
/// SQLite store's one writer), so that the imported log has the file's order.
pub const IMPORT_WINDOW: usize = 256;

/// Most conflicting streams named in a refusal.
const MAX_NAMED_CONFLICTS: usize = 10;

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The first line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// The format's version.
    pub weft_export: u32,
    /// The position the export started at.
    pub from_position: u64,
}

/// The last line's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct End {
    /// Events in the file.
    pub events: u64,
    /// The position of the last of them (0 when there are none).
    pub last_position: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndLine {
    weft_export_end: End,
}

/// One event line as written (borrowing the envelope).
#[derive(Serialize)]
struct Out<'a> {
    position: u64,
    stream: &'a str,
    version: u64,
    event_id: Uuid,
    event_type: &'a str,
    schema_version: u32,
    recorded_at: i64,
    tenant: &'a str,
    actor: &'a str,
    correlation_id: Option<Uuid>,
    causation_id: Option<Uuid>,
    payload: &'a str,
}

/// One event line as read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line {
    /// Its position in the exported store.
    pub position: u64,
    /// Its stream.
    pub stream: String,
    /// Its version.
    pub version: u64,
    /// Its id.
    pub event_id: Uuid,
    /// Its type.
    pub event_type: String,
    /// Its payload's schema version.
    pub schema_version: u32,
    /// When it was recorded, µs since the epoch.
    pub recorded_at: i64,
    /// Its tenant.
    pub tenant: String,
    /// Who caused it.
    pub actor: String,
    /// Its correlation id.
    pub correlation_id: Option<Uuid>,
    /// Its causation id.
    pub causation_id: Option<Uuid>,
    /// The stored payload, base64.
    pub payload: String,
}

/// Why an export or import failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file is not an export: its first line is not a header.
    #[error("line 1: not a Weft export header ({0})")]
    NotAnExport(String),
    /// The file is of a format version this build does not read.
    #[error("line 1: export format version {found}; this build reads version {FORMAT_VERSION}")]
    UnknownFormat {
        /// The version in the file.
        found: u32,
    },
    /// A line is not what the format says.
    #[error("line {line}: {reason}")]
    BadLine {
        /// Its number, from 1.
        line: u64,
        /// What is wrong.
        reason: String,
    },
    /// The file was cut short.
    #[error("the file is truncated: {0}")]
    Truncated(String),
    /// The store holds other events in streams the file has.
    #[error(
        "{count} stream(s) of the file hold other events in the store, so nothing was imported: {}; \
         --on-conflict skip imports the other streams",
        named.join("; ")
    )]
    Conflicts {
        /// How many.
        count: usize,
        /// The first few, each with what differs.
        named: Vec<String>,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] weft_events::Error),
    /// Reading or writing the file failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Writes the events from position `from` on to `out` as the lines of an export (without header or end
/// line). Returns (events written, last position); stops at the head it finds at the start.
pub async fn write_events(
    reader: &Arc<dyn EventRead>,
    from: u64,
    streams: &[StreamName],
    out: &mut impl Write,
    mut progress: impl FnMut(u64, u64),
) -> Result<(u64, u64), Error> {
    let head = reader.head().await?;
    let mut pages = super::read_ahead(reader.clone(), from, head);
    let mut count = 0;
    let mut last = from.saturating_sub(1);
    let mut payload = String::new();
    while let Some(page) = pages.recv().await {
        let page = page?;
        for e in &page {
            last = e.position;
            if !streams.is_empty() && !streams.contains(&e.stream) {
                continue;
            }
            write_line(out, e, &mut payload)?;
            count += 1;
        }
        progress(last, head);
    }
    Ok((count, last))
}

fn write_line(out: &mut impl Write, e: &Envelope, payload: &mut String) -> std::io::Result<()> {
    payload.clear();
    BASE64.encode_string(&e.payload, payload);
    let line = Out {
        position: e.position,
        stream: e.stream.as_str(),
        version: e.version,
        event_id: e.event_id,
        event_type: &e.event_type,
        schema_version: e.schema_version,
        recorded_at: e.recorded_at.as_micros(),
        tenant: &e.tenant,
        actor: &e.actor,
        correlation_id: e.correlation_id,
        causation_id: e.causation_id,
        payload,
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")
}

fn header_line(from: u64) -> String {
    serde_json::to_string(&Header { weft_export: FORMAT_VERSION, from_position: from }).expect("a header serializes")
}

fn end_line(end: End) -> String {
    serde_json::to_string(&EndLine { weft_export_end: end }).expect("an end line serializes")
}

/// A whole export, header to end line, to `out`.
pub async fn export(
    reader: &Arc<dyn EventRead>,
    from: u64,
    streams: &[StreamName],
    out: &mut impl Write,
    progress: impl FnMut(u64, u64),
) -> Result<End, Error> {
    writeln!(out, "{}", header_line(from.max(1)))?;
    let (events, last) = write_events(reader, from.max(1), streams, out, progress).await?;
    let end = End { events, last_position: if events == 0 { 0 } else { last } };
    writeln!(out, "{}", end_line(end))?;
    out.flush()?;
    Ok(end)
}

/// What a file already holds when an export resumes into it.
struct Resume {
    /// Bytes to keep: through the last complete event line.
    keep: u64,
    events: u64,
    /// The store's position the file got to (events of other streams than asked for are not in it, so this is
    /// the header's start less one when it holds none).
    last_position: u64,
}

/// Reads an existing export to resume it: the header must be there; a cut last line and the end line are
/// dropped.
fn scan_for_resume(path: &Path) -> Result<Option<Resume>, Error> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if file.metadata()?.len() == 0 {
        return Ok(None);
    }
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::new();
    let mut offset = reader.read_until(b'\n', &mut line)? as u64;
    let header = parse_header(&line)?;
    let mut resume = Resume { keep: offset, events: 0, last_position: header.from_position - 1 };
    let mut number = 1;
    let mut end = None;
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line)? as u64;
        if read == 0 || !line.ends_with(b"\n") {
            break; // the end, or a line cut short: resumed from before it
        }
        number += 1;
        if let Some(found) = parse_end(&line) {
            end = Some(found);
            break;
        }
        let event: Line = serde_json::from_slice(&line)
            .map_err(|e| Error::BadLine { line: number, reason: format!("not an event line: {e}") })?;
        offset += read;
        resume = Resume { keep: offset, events: resume.events + 1, last_position: event.position };
    }
    if let Some(end) = end {
        // A complete export's end line names its last position, which may be past its last event (a filter).
        resume.last_position = resume.last_position.max(end.last_position);
    }
    Ok(Some(resume))
}

/// `weft events export --output FILE`: a new export, or the rest of the one already there.
pub async fn export_to_file(
    reader: &Arc<dyn EventRead>,
    from: u64,
    streams: &[StreamName],
    path: &Path,
    progress: impl FnMut(u64, u64),
) -> Result<End, Error> {
    let path_owned = path.to_owned();
    let resume = tokio::task::spawn_blocking(move || scan_for_resume(&path_owned))
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))??;
    let Some(resume) = resume else {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
        let end = export(reader, from, streams, &mut out, progress).await?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        return Ok(end);
    };
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.set_len(resume.keep)?;
    file.seek(SeekFrom::End(0))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let (events, last) = write_events(reader, resume.last_position + 1, streams, &mut out, progress).await?;
    let end =
        End { events: resume.events + events, last_position: if events == 0 { resume.last_position } else { last } };
    writeln!(out, "{}", end_line(end))?;
    out.flush()?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(end)
}

fn parse_header(line: &[u8]) -> Result<Header, Error> {
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| Error::NotAnExport(format!("not JSON: {e}")))?;
    let found = value.get("weft_export").and_then(serde_json::Value::as_u64);
    match found {
        Some(v) if v == u64::from(FORMAT_VERSION) => {
            serde_json::from_value(value).map_err(|e| Error::NotAnExport(e.to_string()))
        }
        Some(v) => Err(Error::UnknownFormat { found: u32::try_from(v).unwrap_or(u32::MAX) }),
        None => Err(Error::NotAnExport("no weft_export field".into())),
    }
}

fn parse_end(line: &[u8]) -> Option<End> {
    line.starts_with(b"{\"weft_export_end\"")
        .then(|| serde_json::from_slice::<EndLine>(line).ok().map(|l| l.weft_export_end))
        .flatten()
}

/// What to do with a stream of the file that holds other events in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OnConflict {
    /// Refuse the whole file, writing nothing.
    #[default]
    Fail,
    /// Import the other streams and leave those as the store has them.
    Skip,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Imported {
    /// Events appended.
    pub events: u64,
    /// Events of the file already in the store (an earlier, interrupted import).
    pub already_there: u64,
    /// Streams left out as conflicting (with `--on-conflict skip`).
    pub conflicting_streams: Vec<String>,
    /// Events of those streams, not imported.
    pub skipped_events: u64,
}

/// Where the file's stream is in the target store.
#[derive(Debug, Clone, Copy)]
struct Target {
    /// The store's version of the stream when the import began: the file's events up to it are there.
    present_through: u64,
    /// The next version the file must give.
    next: u64,
    skip: bool,
}

fn decode_line(number: u64, line: &[u8]) -> Result<Line, Error> {
    serde_json::from_slice(line).map_err(|e| Error::BadLine { line: number, reason: format!("not an event line: {e}") })
}

fn new_event(number: u64, line: Line) -> Result<(StreamName, u64, NewEvent), Error> {
    let bad = |reason: String| Error::BadLine { line: number, reason };
    let stream = StreamName::new(&line.stream).map_err(|e| bad(format!("stream: {e}")))?;
    let payload = BASE64.decode(line.payload.as_bytes()).map_err(|e| bad(format!("payload: not base64: {e}")))?;
    if line.version == 0 {
        return Err(bad("version 0: versions start at 1".into()));
    }
    let mut event = NewEvent::new(line.event_type, Bytes::from(payload))
        .schema_version(line.schema_version)
        .tenant(line.tenant)
        .actor(line.actor)
        .recorded_at(Timestamp(line.recorded_at));
    event.event_id = line.event_id;
    event.correlation_id = line.correlation_id;
    event.causation_id = line.causation_id;
    Ok((stream, line.version, event))
}

/// Checks the file's last line before anything is imported: it must be a whole end line.
fn check_end(path: &Path) -> Result<(u64, End), Error> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    // The end line is short; a last line longer than this is an event line, cut or whole.
    let tail = len.min(4096);
    file.seek(SeekFrom::Start(len - tail))?;
    let mut bytes = Vec::with_capacity(tail as usize);
    file.read_to_end(&mut bytes)?;
    let lines = count_lines(path)?;
    let cut = !bytes.ends_with(b"\n");
    let body = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    let last = body.rsplit(|b| *b == b'\n').next().unwrap_or(body);
    match parse_end(last) {
        Some(end) if !cut => Ok((lines, end)),
        _ if cut => Err(Error::Truncated(format!(
            "its last line, line {}, is cut short (no end of line); lines 1 to {} are whole",
            lines + 1,
            lines
        ))),
        _ => Err(Error::Truncated(format!("it ends at line {lines} without its end line"))),
    }
}

fn count_lines(path: &Path) -> std::io::Result<u64> {
    let mut reader = BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    let mut lines = 0u64;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(lines);
        }
        lines += buf.iter().filter(|b| **b == b'\n').count() as u64;
        let n = buf.len();
        reader.consume(n);
    }
}

/// Reads the whole file once before anything is written: every line must decode, each stream's versions must
/// follow on, and each stream must fit where the store stands (already there from an earlier import, next in
/// line, or else a conflict).
async fn plan(
    path: &Path,
    lines: u64,
    store: &dyn EventStore,
    on_conflict: OnConflict,
) -> Result<(HashMap<String, Target>, Vec<String>), Error> {
    let mut targets: HashMap<String, Target> = HashMap::new();
    let mut last_in_file: HashMap<String, u64> = HashMap::new();
    let mut conflicts = Vec::new();
    let empty = store.head().await? == 0;
    let limits = store.limits();
    let mut reader = BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    for number in 2..lines {
        line.clear();
        reader.read_until(b'\n', &mut line)?;
        let event = decode_line(number, &line)?;
        let event_id = event.event_id;
        let (stream, version, new) = new_event(number, event)?;
        if new.payload.len() > limits.max_append_bytes {
            return Err(Error::BadLine {
                line: number,
                reason: format!(
                    "a payload of {} bytes, over the store's {} bytes an append",
                    new.payload.len(),
                    limits.max_append_bytes
                ),
            });
        }
        if let Some(last) = last_in_file.get_mut(stream.as_str()) {
            if version != *last + 1 {
                return Err(Error::BadLine {
                    line: number,
                    reason: format!("{stream} jumps to version {version}, after {last}"),
                });
            }
            *last = version;
            continue;
        }
        last_in_file.insert(stream.as_str().to_owned(), version);
        let there = if empty { 0 } else { store.stream_version(&stream).await? };
        let mut target = Target { present_through: 0, next: version, skip: false };
        if there >= version {
            let found = store.read_stream(&stream, version, Direction::Forwards, 1).await?;
            match found.first() {
                Some(found) if found.event_id == event_id => target.present_through = there,
                Some(found) => {
                    target.skip = true;
                    conflicts.push(format!(
                        "{stream} holds event {} at version {version}, the file has {event_id}",
                        found.event_id
                    ));
                }
                None => unreachable!("the stream has that version"),
            }
        } else if there + 1 != version {
            target.skip = true;
            conflicts.push(if there == 0 {
                format!("{stream} is not in the store, and the file's events of it start at version {version}")
            } else {
                format!("{stream} is at version {there} in the store, and the file's events of it start at {version}")
            });
        }
        targets.insert(stream.as_str().to_owned(), target);
    }
    if !conflicts.is_empty() && on_conflict == OnConflict::Fail {
        return Err(Error::Conflicts {
            count: conflicts.len(),
            named: conflicts.iter().take(MAX_NAMED_CONFLICTS).cloned().collect(),
        });
    }
    Ok((targets, conflicts))
}

/// `weft events import FILE`: appends the file's events to `store`, in the file's order, `window` appends in
/// flight (1 for a store that may commit concurrent appends out of order).
pub async fn import(
    path: &Path,
    store: &dyn EventStore,
    on_conflict: OnConflict,
    window: usize,
    mut progress: impl FnMut(u64, u64),
) -> Result<Imported, Error> {
    let mut reader = BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    parse_header(&line)?;
    let (lines, end) = check_end(path)?;
    if lines.saturating_sub(2) != end.events {
        return Err(Error::Truncated(format!(
            "its end line, line {lines}, counts {} events, the lines before it hold {}",
            end.events,
            lines.saturating_sub(2)
        )));
    }
    let (mut targets, conflicts) = plan(path, lines, store, on_conflict).await?;
    let mut imported = Imported::default();
    let limits = store.limits();
    let mut number = 1;
    // The append being gathered: consecutive events of one stream.
    let mut batch: Option<(StreamName, u64, Vec<NewEvent>, usize)> = None;
    let mut in_flight = futures::stream::FuturesOrdered::new();
    // The streams of the appends in flight, in order: a stream's next append waits for its last one, as its
    // expected version is only there once that one committed.
    let mut flying: std::collections::VecDeque<StreamName> = std::collections::VecDeque::new();
    let mut seen = 0u64;
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line)?;
        if read == 0 {
            break;
        }
        number += 1;
        if number == lines {
            break; // the end line, checked already
        }
        let event = decode_line(number, &line)?;
        seen += 1;
        let target = targets.entry(event.stream.clone()).or_insert(Target {
            present_through: 0,
            next: event.version,
            skip: false,
        });
        if target.skip {
            imported.skipped_events += 1;
            continue;
        }
        if event.version <= target.present_through {
            imported.already_there += 1;
            target.next = event.version + 1;
            continue;
        }
        if event.version != target.next {
            return Err(Error::BadLine {
                line: number,
                reason: format!("{} jumps to version {}, after {}", event.stream, event.version, target.next - 1),
            });
        }
        target.next += 1;
        let (stream, version, new) = new_event(number, event)?;
        let size = new.payload.len();
        let fits = batch.as_ref().is_some_and(|(s, _, events, bytes)| {
            s == &stream && events.len() < limits.max_events_per_append && bytes + size <= limits.max_append_bytes
        });
        if !fits && let Some((s, first, events, _)) = batch.take() {
            imported.events += events.len() as u64;
            while flying.contains(&s) || in_flight.len() >= window.max(1) {
                in_flight.next().await.expect("not empty")?;
                flying.pop_front();
            }
            flying.push_back(s.clone());
            in_flight.push_back(append(store, s, first, events));
            progress(seen, end.events);
        }
        match &mut batch {
            Some((_, _, events, bytes)) => {
                events.push(new);
                *bytes += size;
            }
            None => batch = Some((stream, version, vec![new], size)),
        }
    }
    if let Some((s, first, events, _)) = batch.take() {
        imported.events += events.len() as u64;
        while flying.contains(&s) {
            in_flight.next().await.expect("not empty")?;
            flying.pop_front();
        }
        in_flight.push_back(append(store, s, first, events));
    }
    while let Some(done) = in_flight.next().await {
        done?;
    }
    progress(seen, end.events);
    if seen != end.events {
        return Err(Error::Truncated(format!(
            "its end line counts {} events, the lines before it hold {seen}",
            end.events
        )));
    }
    imported.conflicting_streams = conflicts;
    Ok(imported)
}

async fn append(store: &dyn EventStore, stream: StreamName, first: u64, events: Vec<NewEvent>) -> Result<(), Error> {
    let expected = if first == 1 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(first - 1) };
    store.append(&stream, expected, events).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_of_other_versions_and_other_files_are_refused_by_name() {
        assert!(matches!(
            parse_header(br#"{"weft_export":2,"from_position":1}"#),
            Err(Error::UnknownFormat { found: 2 })
        ));
        assert!(matches!(parse_header(br#"{"hello":1}"#), Err(Error::NotAnExport(_))));
        assert!(matches!(parse_header(b"PK\x03\x04"), Err(Error::NotAnExport(_))));
        assert_eq!(parse_header(header_line(5).as_bytes()).unwrap(), Header { weft_export: 1, from_position: 5 });
        assert_eq!(
            parse_end(end_line(End { events: 3, last_position: 9 }).as_bytes()),
            Some(End { events: 3, last_position: 9 })
        );
    }
}
