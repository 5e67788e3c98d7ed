//! Importing an export file into a store: the file checked whole first (its end line, every line's shape),
//! a plan of what each stream needs (new, already there, continued, or in conflict), then the appends, in the
//! file's order.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use weft_events::{Direction, EventStore, ExpectedVersion, NewEvent, StreamName, Timestamp};

use super::{BASE64, End, Error, Line, MAX_NAMED_CONFLICTS, parse_end, parse_header};

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
pub(super) struct Target {
    /// The store's version of the stream when the import began: the file's events up to it are there.
    present_through: u64,
    /// The next version the file must give.
    next: u64,
    skip: bool,
}

pub(super) fn decode_line(number: u64, line: &[u8]) -> Result<Line, Error> {
    serde_json::from_slice(line).map_err(|e| Error::BadLine { line: number, reason: format!("not an event line: {e}") })
}

pub(super) fn new_event(number: u64, line: Line) -> Result<(StreamName, u64, NewEvent), Error> {
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
pub(super) fn check_end(path: &Path) -> Result<(u64, End), Error> {
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

pub(super) fn count_lines(path: &Path) -> std::io::Result<u64> {
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
pub(super) async fn plan(
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

pub(super) async fn append(
    store: &dyn EventStore,
    stream: StreamName,
    first: u64,
    events: Vec<NewEvent>,
) -> Result<(), Error> {
    let expected = if first == 1 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(first - 1) };
    store.append(&stream, expected, events).await?;
    Ok(())
}
