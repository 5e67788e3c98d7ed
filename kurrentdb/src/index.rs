//! Weft's positions over KurrentDB's log.
//!
//! Weft promises dense positions (1, 2, 3 ... with no gap, across the store, in commit order) and appends
//! whose events have consecutive positions. KurrentDB orders every event of the database in `$all`, but
//! its positions there are byte offsets of the transaction log (a commit and a prepare position), shared
//! with every other stream of the database and with gaps between. So each Weft process numbers this
//! store's events itself: an event's **position is its rank among the store's events in `$all` order**.
//! `$all`'s order is fixed once written, and whether an event is the store's depends only on its stream's
//! name ([`crate::names::Names::stream_of`]), so every process that reads the same database numbers it the
//! same way, with nothing to coordinate. One append's events are written together, so their ranks follow
//! one another.
//!
//! The [`Index`] is what a process keeps of that numbering, in memory, built by reading the store's events
//! when it opens the store and kept up by following `$all` live:
//!
//! - every [`ANCHOR_EVERY`]th position's place in `$all` (and its event id, to check it is still there): a
//!   read of the log from position `p` starts at the anchor at or before `p` and counts on from there;
//! - for every stream, the position of each of its versions: a stream read learns its events' positions
//!   here (KurrentDB answers a stream read without `$all` positions), and an append learns where its events
//!   landed once the follower has seen them.
//!
//! That is 8 bytes per event and about 100 per stream. Deleting or truncating one of the store's streams in
//! KurrentDB behind Weft's back would renumber what follows; the index notices (a version out of order, an
//! anchor whose event is gone) and the store then reports itself corrupt rather than serve shifted positions.

use std::collections::HashMap;

use uuid::Uuid;
use weft_events::StreamName;

/// One anchor per this many positions.
pub const ANCHOR_EVERY: u64 = 64;

/// A place in `$all`: KurrentDB's commit and prepare positions, ordered as `$all` is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct At {
    /// The commit position.
    pub commit: u64,
    /// The prepare position.
    pub prepare: u64,
}

/// The numbering broke: the log changed under it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{stream}: {detail}")]
pub struct Broken {
    /// The Weft stream.
    pub stream: StreamName,
    /// What does not add up.
    pub detail: String,
}

/// A process's numbering of the store's events (see the module doc).
#[derive(Debug, Default)]
pub struct Index {
    /// Positions numbered so far: the position of the last.
    head: u64,
    /// Where the last numbered event is in `$all`; `None` before the first.
    tail: Option<At>,
    /// The place in `$all` and id of positions 1, 1 + ANCHOR_EVERY, 1 + 2 * ANCHOR_EVERY ...
    anchors: Vec<(At, Uuid)>,
    /// Each stream's positions, by version (index `version - 1`).
    streams: HashMap<StreamName, Vec<u64>>,
}

impl Index {
    /// The position of the last numbered event; 0 before the first.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// Where in `$all` the last numbered event is.
    pub fn tail(&self) -> Option<At> {
        self.tail
    }

    /// Numbers the event of `stream` at `version` with id `id`, found at `at` in `$all`: its position, or
    /// `None` when it was numbered already (a read or subscription that started at or before the tail hands
    /// events over twice).
    pub fn add(&mut self, at: At, id: Uuid, stream: &StreamName, version: u64) -> Result<Option<u64>, Broken> {
        if self.tail.is_some_and(|tail| at <= tail) {
            return Ok(None);
        }
        let versions = self.streams.entry(stream.clone()).or_default();
        let expected = versions.len() as u64 + 1;
        if version != expected {
            return Err(Broken {
                stream: stream.clone(),
                detail: format!(
                    "version {version} follows version {} in $all; a stream of the store was deleted or truncated \
                     in KurrentDB",
                    expected - 1
                ),
            });
        }
        self.head += 1;
        versions.push(self.head);
        if (self.head - 1).is_multiple_of(ANCHOR_EVERY) {
            self.anchors.push((at, id));
        }
        self.tail = Some(at);
        Ok(Some(self.head))
    }

    /// The anchor to read position `position` from: the anchor's position, its place in `$all` and its event's
    /// id. `None` when `position` is not numbered yet (or is 0).
    pub fn seek(&self, position: u64) -> Option<(u64, At, Uuid)> {
        if position == 0 || position > self.head {
            return None;
        }
        let index = (position - 1) / ANCHOR_EVERY;
        let (at, id) = self.anchors[index as usize];
        Some((index * ANCHOR_EVERY + 1, at, id))
    }

    /// The position of `stream`'s event at `version`, once numbered.
    pub fn position_of(&self, stream: &StreamName, version: u64) -> Option<u64> {
        let index = usize::try_from(version.checked_sub(1)?).ok()?;
        self.streams.get(stream)?.get(index).copied()
    }

    /// The last version of `stream` numbered so far.
    pub fn version_of(&self, stream: &StreamName) -> u64 {
        self.streams.get(stream).map_or(0, |v| v.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(commit: u64) -> At {
        At { commit, prepare: commit }
    }

    fn stream(name: &str) -> StreamName {
        StreamName::new(name).unwrap()
    }

    #[test]
    fn positions_are_ranks_in_all_order_whatever_the_gaps() {
        let mut index = Index::default();
        let (a, b) = (stream("a"), stream("b"));
        // Offsets of a shared log: other streams' events take the space between.
        assert_eq!(index.add(at(100), Uuid::from_u128(1), &a, 1), Ok(Some(1)));
        assert_eq!(index.add(at(5_000), Uuid::from_u128(2), &b, 1), Ok(Some(2)));
        assert_eq!(index.add(at(5_090), Uuid::from_u128(3), &a, 2), Ok(Some(3)));
        assert_eq!(index.head(), 3);
        assert_eq!(index.tail(), Some(at(5_090)));
        assert_eq!(index.position_of(&a, 2), Some(3));
        assert_eq!(index.position_of(&b, 1), Some(2));
        assert_eq!(index.position_of(&b, 2), None);
        assert_eq!(index.position_of(&a, 0), None);
        assert_eq!((index.version_of(&a), index.version_of(&stream("c"))), (2, 0));
    }

    #[test]
    fn events_handed_over_twice_are_numbered_once() {
        let mut index = Index::default();
        let a = stream("a");
        index.add(at(10), Uuid::from_u128(1), &a, 1).unwrap();
        index.add(at(20), Uuid::from_u128(2), &a, 2).unwrap();
        // A subscription resumed from the tail, whose start is inclusive, hands the tail over again.
        assert_eq!(index.add(at(20), Uuid::from_u128(2), &a, 2), Ok(None));
        assert_eq!(index.add(at(10), Uuid::from_u128(1), &a, 1), Ok(None));
        assert_eq!(index.add(at(30), Uuid::from_u128(3), &a, 3), Ok(Some(3)));
        // Events of one append share a commit position and differ by prepare position.
        let same_commit = At { commit: 40, prepare: 35 };
        assert_eq!(index.add(same_commit, Uuid::from_u128(4), &a, 4), Ok(Some(4)));
        assert_eq!(index.add(At { commit: 40, prepare: 38 }, Uuid::from_u128(5), &a, 5), Ok(Some(5)));
    }

    #[test]
    fn a_read_starts_at_the_anchor_at_or_before_it() {
        let mut index = Index::default();
        let a = stream("a");
        for n in 1..=(2 * ANCHOR_EVERY + 5) {
            index.add(at(n * 7), Uuid::from_u128(n.into()), &a, n).unwrap();
        }
        assert_eq!(index.seek(0), None);
        assert_eq!(index.seek(1), Some((1, at(7), Uuid::from_u128(1))));
        assert_eq!(index.seek(ANCHOR_EVERY), Some((1, at(7), Uuid::from_u128(1))));
        let second = ANCHOR_EVERY + 1;
        assert_eq!(index.seek(second), Some((second, at(second * 7), Uuid::from_u128(second.into()))));
        let last = 2 * ANCHOR_EVERY + 5;
        assert_eq!(index.seek(last).map(|s| s.0), Some(2 * ANCHOR_EVERY + 1));
        assert_eq!(index.seek(last + 1), None, "not numbered yet");
    }

    #[test]
    fn a_stream_changed_behind_the_store_breaks_the_numbering() {
        let mut index = Index::default();
        let a = stream("a");
        index.add(at(10), Uuid::from_u128(1), &a, 1).unwrap();
        let broken = index.add(at(20), Uuid::from_u128(2), &a, 3).unwrap_err();
        assert_eq!(broken.stream, a);
        assert!(broken.detail.contains("version 3 follows version 1"), "{}", broken.detail);
        // Nothing was numbered.
        assert_eq!(index.head(), 1);
    }
}
