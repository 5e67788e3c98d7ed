//! A log's digest: what `weft events verify` prints and `weft events copy` compares at both ends, so that two
//! stores can be shown to hold the same events whatever their positions.
//!
//! Each stream's events are chained in version order: `d = SHA-256(d_before, version, event id, type, schema
//! version, recorded time, tenant, actor, correlation id, causation id, payload length, payload)` (the
//! payload's stored bytes, personal fields sealed). The log's digest is the SHA-256 of every stream's name,
//! event count and last `d`, in the order of the streams' names. Positions are left out: a copy may place
//! events at other positions, never in another order within a stream.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use weft_events::{Envelope, EventRead, StreamName};

/// What a log holds, in short.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// Its events.
    pub events: u64,
    /// Its streams.
    pub streams: u64,
    /// The SHA-256 of its streams' chains (see the module doc), hex.
    pub sha256: String,
}

/// One stream's part of a [`Digest`]: what `weft events verify --streams` lists, to find which stream two
/// stores disagree on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamDigest {
    /// The stream.
    pub stream: String,
    /// Its events.
    pub events: u64,
    /// The SHA-256 chain over them (see the module doc), hex.
    pub sha256: String,
}

/// Builds a [`Digest`] event by event, in position order.
#[derive(Default)]
pub struct Digester {
    streams: HashMap<StreamName, (u64, [u8; 32])>,
    events: u64,
}

impl Digester {
    /// Adds `e`.
    pub fn add(&mut self, e: &Envelope) {
        let (count, chain) = self.streams.entry(e.stream.clone()).or_insert((0, [0; 32]));
        let mut hash = Sha256::new();
        hash.update(*chain);
        hash.update(e.version.to_be_bytes());
        hash.update(e.event_id.as_bytes());
        for text in [&*e.event_type, &*e.tenant, &*e.actor] {
            hash.update((text.len() as u64).to_be_bytes());
            hash.update(text.as_bytes());
        }
        hash.update(e.schema_version.to_be_bytes());
        hash.update(e.recorded_at.as_micros().to_be_bytes());
        for id in [e.correlation_id, e.causation_id] {
            hash.update(id.map_or([0; 16], |id| *id.as_bytes()));
        }
        hash.update((e.payload.len() as u64).to_be_bytes());
        hash.update(&e.payload);
        *chain = hash.finalize().into();
        *count += 1;
        self.events += 1;
    }

    /// Each stream's part, in the order of the streams' names.
    pub fn streams(&self) -> Vec<StreamDigest> {
        let mut streams: Vec<StreamDigest> = self
            .streams
            .iter()
            .map(|(stream, (events, chain))| StreamDigest {
                stream: stream.to_string(),
                events: *events,
                sha256: hex(chain),
            })
            .collect();
        streams.sort_unstable_by(|a, b| a.stream.cmp(&b.stream));
        streams
    }

    /// The digest of what was added.
    pub fn finish(self) -> Digest {
        let mut streams: Vec<_> = self.streams.into_iter().collect();
        streams.sort_unstable_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        let mut hash = Sha256::new();
        for (stream, (count, chain)) in &streams {
            hash.update((stream.as_str().len() as u64).to_be_bytes());
            hash.update(stream.as_str().as_bytes());
            hash.update(count.to_be_bytes());
            hash.update(chain);
        }
        let sha256 = hex(&hash.finalize());
        Digest { events: self.events, streams: streams.len() as u64, sha256 }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The digest of `reader`'s log through position `through`.
pub async fn digest(reader: Arc<dyn EventRead>, through: u64) -> Result<Digest, weft_events::Error> {
    let mut digester = Digester::default();
    let mut pages = super::read_ahead(reader, 1, through);
    while let Some(page) = pages.recv().await {
        for e in &page? {
            digester.add(e);
        }
    }
    Ok(digester.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_events::{NewEvent, Timestamp};

    fn event(stream: &str, version: u64, position: u64, payload: &'static [u8]) -> Envelope {
        NewEvent::new("document.registered", bytes::Bytes::from_static(payload)).into_envelope(
            StreamName::new(stream).unwrap(),
            version,
            position,
            Timestamp(7),
        )
    }

    #[test]
    fn the_digest_ignores_positions_and_the_order_of_streams_but_not_a_byte_of_an_event() {
        let (a1, a2, b1) = (event("a-1", 1, 1, b"x"), event("a-1", 2, 2, b"y"), event("b-1", 1, 3, b"z"));
        let of = |events: &[&Envelope]| {
            let mut digester = Digester::default();
            events.iter().for_each(|e| digester.add(e));
            digester.finish()
        };
        let first = of(&[&a1, &a2, &b1]);
        assert_eq!((first.events, first.streams), (3, 2));
        // Other positions, streams interleaved otherwise: the same.
        let moved = [Envelope { position: 9, ..b1.clone() }, Envelope { position: 10, ..a1.clone() }];
        assert_eq!(of(&[&moved[0], &moved[1], &a2]), first);
        // A payload byte, an id, a time, a version's order: not the same.
        assert_ne!(of(&[&a1, &Envelope { payload: bytes::Bytes::from_static(b"Y"), ..a2.clone() }, &b1]), first);
        assert_ne!(of(&[&a1, &Envelope { event_id: uuid::Uuid::now_v7(), ..a2.clone() }, &b1]), first);
        assert_ne!(of(&[&a1, &Envelope { recorded_at: Timestamp(8), ..a2.clone() }, &b1]), first);
        assert_ne!(of(&[&a2, &a1, &b1]), first);
    }
}
