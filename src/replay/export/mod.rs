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

use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use weft_events::{Envelope, EventRead, StreamName};

/// The format's version, in the header. A file of a newer version is refused by name.
pub const FORMAT_VERSION: u32 = 1;

/// Appends in flight while importing into a store that commits them in the order they were asked for (the
/// SQLite store's one writer), so that the imported log has the file's order.
pub const IMPORT_WINDOW: usize = 256;

/// Most conflicting streams named in a refusal.
const MAX_NAMED_CONFLICTS: usize = 10;

mod import;

pub use import::{Imported, OnConflict, import};

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
