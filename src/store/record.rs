//! The stored form of one event, shared by the backends: the `record` column of SQLite's log, the body of a
//! JetStream message.
//!
//! SQLite keeps `position`, `stream` and `version` as columns (so the stream index can be rebuilt and an
//! operator can query the file with `sqlite3`) and everything else in one blob, because one blob is far
//! cheaper for SQLite to write and read than a dozen columns. JetStream keeps `stream` and `version` in the
//! message's subject and the position is the message's stream sequence, which the server assigns after the
//! record is encoded: its records are checksummed with position 0. Layout, integers little-endian:
//!
//! ```text
//! u8   format (1)
//! [16] event_id
//! u32  schema_version
//! i64  recorded_at (µs since the Unix epoch)
//! u8   flags: bit 0 correlation_id present, bit 1 causation_id present
//! [16] correlation_id (if present)
//! [16] causation_id (if present)
//! u16  length, then that many bytes: event_type, tenant, actor (UTF-8)
//! ...  payload (the rest, up to the checksum)
//! u32  CRC-32 of position, stream, version and every byte above
//! ```
//!
//! Decoding takes bytes from a file that may be damaged: every length is checked against what is left, and
//! any mismatch, bad UTF-8 or wrong checksum is an error, never a panic or a wrong event.

use std::sync::Arc;

use bytes::Bytes;
use uuid::Uuid;
use weft_events::{Envelope, NewEvent, StreamName, Timestamp};

const FORMAT: u8 = 1;
const HAS_CORRELATION: u8 = 1;
const HAS_CAUSATION: u8 = 2;
const CHECKSUM_BYTES: usize = 4;

/// Encodes `event` as it will be stored at (`stream`, `version`, `position`), committed at `committed_at`
/// (unless the event keeps the time it was first recorded), appending to `out`.
pub fn encode(
    out: &mut Vec<u8>,
    event: &NewEvent,
    stream: &StreamName,
    version: u64,
    position: u64,
    committed_at: Timestamp,
) {
    let recorded_at = event.recorded_at.unwrap_or(committed_at);
    out.clear();
    out.push(FORMAT);
    out.extend_from_slice(event.event_id.as_bytes());
    out.extend_from_slice(&event.schema_version.to_le_bytes());
    out.extend_from_slice(&recorded_at.as_micros().to_le_bytes());
    let flags = u8::from(event.correlation_id.is_some()) * HAS_CORRELATION
        + u8::from(event.causation_id.is_some()) * HAS_CAUSATION;
    out.push(flags);
    for id in [event.correlation_id, event.causation_id].into_iter().flatten() {
        out.extend_from_slice(id.as_bytes());
    }
    for text in [&event.event_type, &event.tenant, &event.actor] {
        // Names are checked against limits far below u16::MAX before they reach the store.
        let len = u16::try_from(text.len()).expect("names are shorter than 64 KiB");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(text.as_bytes());
    }
    out.extend_from_slice(&event.payload);
    let crc = checksum(position, stream.as_str().as_bytes(), version, out);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// How many recent names of each kind [`Names`] remembers.
const RECENT: usize = 8;

/// The names seen lately while decoding a run of records. Consecutive events mostly share their event type,
/// tenant and actor, and often their stream: a name equal to a recent one is shared instead of checked and
/// allocated again. A short list compared byte by byte beats a hash map here.
#[derive(Default)]
pub struct Names {
    streams: Vec<StreamName>,
    labels: Vec<Arc<str>>,
    /// Where the next new name of each kind goes once the lists are full.
    next_stream: usize,
    next_label: usize,
}

impl Names {
    /// Called only after the record's checksum, which covers the stream name, has passed: a name is checked
    /// against the rules when it is written, not each time it is read.
    fn stream(&mut self, name: &[u8]) -> Result<StreamName, String> {
        if let Some(stream) = self.streams.iter().find(|s| s.as_str().as_bytes() == name) {
            return Ok(stream.clone());
        }
        let name = std::str::from_utf8(name).map_err(|_| "has a stream name that is not UTF-8")?;
        let stream = StreamName::from_stored(name);
        remember(&mut self.streams, &mut self.next_stream, stream.clone());
        Ok(stream)
    }

    fn label(&mut self, bytes: &[u8]) -> Result<Arc<str>, String> {
        if let Some(label) = self.labels.iter().find(|l| l.as_bytes() == bytes) {
            return Ok(label.clone());
        }
        let text = std::str::from_utf8(bytes).map_err(|_| "has a record with a name that is not UTF-8")?;
        let label: Arc<str> = Arc::from(text);
        remember(&mut self.labels, &mut self.next_label, label.clone());
        Ok(label)
    }
}

fn remember<T>(recent: &mut Vec<T>, next: &mut usize, value: T) {
    if recent.len() < RECENT {
        recent.push(value);
    } else {
        recent[*next] = value;
        *next = (*next + 1) % RECENT;
    }
}

/// Decodes a stored record; `Err` says what is wrong with it.
pub fn decode(
    names: &mut Names,
    position: u64,
    stream: &[u8],
    version: u64,
    record: &[u8],
) -> Result<Envelope, String> {
    if record.len() < CHECKSUM_BYTES + 1 {
        return Err(format!("has a record of {} bytes, too short to hold one", record.len()));
    }
    let (body, crc) = record.split_at(record.len() - CHECKSUM_BYTES);
    let stored = u32::from_le_bytes(crc.try_into().expect("split at 4"));
    if checksum(position, stream, version, body) != stored {
        return Err("fails its checksum".into());
    }
    let mut r = Reader(body);
    if r.u8()? != FORMAT {
        return Err("has a record of an unknown format".into());
    }
    let event_id = r.uuid()?;
    let schema_version = u32::from_le_bytes(r.array()?);
    let recorded_at = Timestamp(i64::from_le_bytes(r.array()?));
    let flags = r.u8()?;
    let correlation_id = if flags & HAS_CORRELATION != 0 { Some(r.uuid()?) } else { None };
    let causation_id = if flags & HAS_CAUSATION != 0 { Some(r.uuid()?) } else { None };
    let event_type = names.label(r.text()?)?;
    let tenant = names.label(r.text()?)?;
    let actor = names.label(r.text()?)?;
    let stream = names.stream(stream)?;
    Ok(Envelope {
        event_id,
        stream,
        version,
        position,
        event_type,
        schema_version,
        recorded_at,
        tenant,
        correlation_id,
        causation_id,
        actor,
        payload: Bytes::copy_from_slice(r.0),
    })
}

fn checksum(position: u64, stream: &[u8], version: u64, body: &[u8]) -> u32 {
    // Position, version, the stream's length and the stream in one buffer: one short update instead of
    // three is measurably cheaper on the read path.
    const PREFIX: usize = 24;
    let mut head = [0u8; PREFIX + weft_events::envelope::MAX_STREAM_NAME_BYTES];
    head[..8].copy_from_slice(&position.to_le_bytes());
    head[8..16].copy_from_slice(&version.to_le_bytes());
    head[16..PREFIX].copy_from_slice(&(stream.len() as u64).to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    match head.get_mut(PREFIX..PREFIX + stream.len()) {
        Some(room) => {
            room.copy_from_slice(stream);
            h.update(&head[..PREFIX + stream.len()]);
        }
        // Longer than any valid name: only a damaged row gets here, and its checksum will not match.
        None => {
            h.update(&head[..PREFIX]);
            h.update(stream);
        }
    }
    h.update(body);
    h.finalize()
}

/// A bounds-checked cursor over a record.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.0.len() < n {
            return Err(format!("has a record that ends early (wanted {n} more bytes, {} left)", self.0.len()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn uuid(&mut self) -> Result<Uuid, String> {
        Ok(Uuid::from_bytes(self.array()?))
    }

    fn text(&mut self) -> Result<&[u8], String> {
        let len = u16::from_le_bytes(self.array()?) as usize;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sample() -> NewEvent {
        NewEvent::new("document.uploaded", vec![1, 2, 3])
            .tenant("acme")
            .actor("user:alice")
            .correlation_id(Uuid::now_v7())
            .schema_version(2)
    }

    #[test]
    fn a_record_round_trips() {
        let event = sample();
        let stream = StreamName::new("document-1").unwrap();
        let mut buf = Vec::new();
        encode(&mut buf, &event, &stream, 3, 17, Timestamp(42));
        let back = decode(&mut Names::default(), 17, b"document-1", 3, &buf).unwrap();
        assert_eq!(back, event.into_envelope(stream, 3, 17, Timestamp(42)));
    }

    #[test]
    fn a_record_moved_to_another_place_fails_its_checksum() {
        let stream = StreamName::new("document-1").unwrap();
        let mut buf = Vec::new();
        encode(&mut buf, &sample(), &stream, 3, 17, Timestamp(42));
        assert!(decode(&mut Names::default(), 18, b"document-1", 3, &buf).is_err());
        assert!(decode(&mut Names::default(), 17, b"document-2", 3, &buf).is_err());
        assert!(decode(&mut Names::default(), 17, b"document-1", 4, &buf).is_err());
    }

    proptest! {
        #[test]
        fn every_flipped_byte_is_caught(at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let stream = StreamName::new("document-1").unwrap();
            let mut buf = Vec::new();
            encode(&mut buf, &sample(), &stream, 3, 17, Timestamp(42));
            let i = at.index(buf.len());
            buf[i] ^= 1 << bit;
            prop_assert!(decode(&mut Names::default(), 17, b"document-1", 3, &buf).is_err());
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&mut Names::default(), 1, b"s", 1, &bytes);
        }
    }
}
