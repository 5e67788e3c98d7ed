//! The events committed last, kept in memory for the subscriptions that follow the head.
//!
//! Every commit wakes every subscription of the node (the process managers, the projections, the
//! publisher), and each then reads the few events it has not seen. From the file that is a trip to the
//! blocking pool and a query per subscription per commit; from here it is a lock and a copy of the
//! envelopes. The writer adds a commit's events after the commit and before it moves the head, so a reader
//! woken by the head finds them here; the ring holds a run of positions without a gap, ending at the head.
//! A read that starts before the ring's first event goes to the file, as before.
//!
//! Bounded by events and by payload bytes, whichever is reached first: the oldest go.
//!
//! Beside them, the last version of each stream appended to lately. The writer is the only one that changes
//! versions and records each commit here before it answers, so these are exact: the writer checks expected
//! versions against them, and a read of a stream past its last version (an actor making sure it has seen
//! every event before it answers a read of its state) is answered without the file. Bounded by
//! [`MAX_VERSIONS`]; past it the map starts over.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use weft_events::{Envelope, StreamName};

/// Most events kept.
pub(crate) const MAX_EVENTS: usize = 8192;

/// Most payload bytes kept.
pub(crate) const MAX_BYTES: usize = 16 << 20;

/// Most streams whose last version is kept.
pub(crate) const MAX_VERSIONS: usize = 100_000;

#[derive(Default)]
struct Ring {
    events: VecDeque<Envelope>,
    bytes: usize,
    versions: HashMap<StreamName, u64>,
}

/// The last committed events, shared by the writer and the readers.
#[derive(Default)]
pub(crate) struct Recent {
    ring: Mutex<Ring>,
}

impl Recent {
    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // Nothing below can panic halfway through a change.
        self.ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a commit's events, in position order, the first right after the last one held. A run that
    /// does not follow on (the writer re-read its head after a failed commit) starts the ring afresh.
    pub(crate) fn add(&self, events: Vec<Envelope>) {
        let Some(first) = events.first() else { return };
        let mut ring = self.lock();
        if ring.versions.len() + events.len() > MAX_VERSIONS {
            ring.versions.clear();
        }
        for event in &events {
            // In position order, so each stream's last event is its last version.
            ring.versions.insert(event.stream.clone(), event.version);
        }
        if ring.events.back().is_some_and(|last| last.position + 1 != first.position) {
            ring.events.clear();
            ring.bytes = 0;
        }
        for event in events {
            ring.bytes += event.payload.len();
            ring.events.push_back(event);
        }
        while ring.events.len() > MAX_EVENTS || (ring.bytes > MAX_BYTES && ring.events.len() > 1) {
            let gone = ring.events.pop_front().expect("more than one event");
            ring.bytes -= gone.payload.len();
        }
    }

    /// The last version of `stream`, if it was appended to lately.
    pub(crate) fn last_version(&self, stream: &StreamName) -> Option<u64> {
        self.lock().versions.get(stream).copied()
    }

    /// Up to `limit` events from position `from` on, if the ring holds `from` (or `from` is right after
    /// its last event: then none, as the file would answer); `None` when the file must be read.
    pub(crate) fn read(&self, from: u64, limit: usize) -> Option<Vec<Envelope>> {
        let ring = self.lock();
        let first = ring.events.front()?.position;
        let last = ring.events.back()?.position;
        if from < first || from > last + 1 {
            return None;
        }
        let skip = usize::try_from(from - first).ok()?;
        Some(ring.events.iter().skip(skip).take(limit).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use weft_events::{NewEvent, StreamName, Timestamp};

    use super::*;

    fn events(positions: std::ops::RangeInclusive<u64>, payload: usize) -> Vec<Envelope> {
        let stream = StreamName::new("document-1").unwrap();
        positions
            .map(|p| {
                NewEvent::new("document.uploaded", vec![0u8; payload]).into_envelope(stream.clone(), p, p, Timestamp(1))
            })
            .collect()
    }

    fn positions(read: Option<Vec<Envelope>>) -> Option<Vec<u64>> {
        read.map(|events| events.iter().map(|e| e.position).collect())
    }

    #[test]
    fn reads_inside_the_ring_come_from_it_and_others_go_to_the_file() {
        let recent = Recent::default();
        assert_eq!(positions(recent.read(1, 10)), None, "an empty ring knows nothing");
        recent.add(events(5..=9, 1));
        assert_eq!(positions(recent.read(4, 10)), None, "before the ring: the file");
        assert_eq!(positions(recent.read(5, 2)), Some(vec![5, 6]));
        assert_eq!(positions(recent.read(8, 10)), Some(vec![8, 9]));
        assert_eq!(positions(recent.read(10, 10)), Some(vec![]), "right after the head: nothing yet");
        assert_eq!(positions(recent.read(11, 10)), None);
    }

    #[test]
    fn a_run_that_does_not_follow_on_starts_the_ring_afresh() {
        let recent = Recent::default();
        recent.add(events(1..=3, 1));
        recent.add(events(7..=8, 1));
        assert_eq!(positions(recent.read(3, 10)), None);
        assert_eq!(positions(recent.read(7, 10)), Some(vec![7, 8]));
    }

    #[test]
    fn the_last_version_of_each_stream_appended_to_is_known() {
        let recent = Recent::default();
        let (a, b) = (StreamName::new("job-a").unwrap(), StreamName::new("job-b").unwrap());
        assert_eq!(recent.last_version(&a), None);
        let event = |stream: &StreamName, version, position| {
            NewEvent::new("job.submitted", vec![]).into_envelope(stream.clone(), version, position, Timestamp(1))
        };
        recent.add(vec![event(&a, 1, 1), event(&b, 4, 2), event(&a, 2, 3)]);
        assert_eq!((recent.last_version(&a), recent.last_version(&b)), (Some(2), Some(4)));
    }

    #[test]
    fn the_oldest_go_past_the_bounds() {
        let recent = Recent::default();
        let last = MAX_EVENTS as u64 + 10;
        recent.add(events(1..=last, 1));
        assert_eq!(positions(recent.read(10, 1)), None);
        assert_eq!(positions(recent.read(11, 1)), Some(vec![11]));

        let recent = Recent::default();
        recent.add(events(1..=4, MAX_BYTES / 3));
        assert_eq!(positions(recent.read(1, 10)), None, "four of a third each are over the bytes");
        assert_eq!(positions(recent.read(2, 10)), Some(vec![2, 3, 4]));
        recent.add(events(5..=5, MAX_BYTES * 2));
        assert_eq!(positions(recent.read(5, 10)), Some(vec![5]), "one event over the bound alone is kept");
    }
}
