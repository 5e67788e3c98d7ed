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

/// One read of the log from position `from`: which of the events a read of `$all` from the anchor hands
/// over are which positions. The reads it takes are inclusive of where they start and may hand an event over
/// again; `$all` may hold, under the store's prefix, streams that are not the store's.
#[derive(Debug)]
pub struct Walk {
    anchor: u64,
    anchor_at: At,
    anchor_id: Uuid,
    from: u64,
    /// The position of the last of the store's events counted.
    counted: u64,
    /// Where in `$all` the last event handed over is.
    seen: Option<At>,
}

/// What a [`Walk`] makes of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Not a position wanted (handed over again, before `from`, or not the store's).
    Skip,
    /// The event at this position.
    Keep(u64),
}

/// The event at an anchor is not the one numbered there: the log changed under the numbering.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("position {position} was event {was} and is now {now}: the log changed in KurrentDB")]
pub struct Moved {
    /// The anchor's position.
    pub position: u64,
    /// The event numbered there.
    pub was: Uuid,
    /// The event found there.
    pub now: Uuid,
}

impl Walk {
    /// A walk to position `from` from `anchor` ([`Index::seek`]).
    pub fn new((anchor, anchor_at, anchor_id): (u64, At, Uuid), from: u64) -> Self {
        Self { anchor, anchor_at, anchor_id, from, counted: anchor - 1, seen: None }
    }

    /// Where the next read of `$all` starts.
    pub fn resume_at(&self) -> At {
        self.seen.unwrap_or(self.anchor_at)
    }

    /// How many events the next read should ask for, to reach `left` more wanted ones: those still to skip,
    /// those wanted, and one for the start, which a read hands over again.
    pub fn to_ask(&self, left: usize) -> usize {
        usize::try_from(self.from.saturating_sub(self.counted + 1)).unwrap_or(usize::MAX).saturating_add(left + 1)
    }

    /// The next event `$all` handed over: at `here`, with id `id`, of one of the store's streams or not.
    pub fn step(&mut self, here: At, id: Uuid, ours: bool) -> Result<Step, Moved> {
        if self.seen.is_some_and(|s| here <= s) || here < self.anchor_at {
            return Ok(Step::Skip);
        }
        self.seen = Some(here);
        if !ours {
            return Ok(Step::Skip);
        }
        self.counted += 1;
        if self.counted == self.anchor && id != self.anchor_id {
            return Err(Moved { position: self.anchor, was: self.anchor_id, now: id });
        }
        Ok(if self.counted >= self.from { Step::Keep(self.counted) } else { Step::Skip })
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

    /// A synthetic `$all`: the store's events (`true`) among others under its prefix, with gaps between.
    fn log(ours: &[bool]) -> Vec<(At, Uuid, bool)> {
        ours.iter().enumerate().map(|(n, &o)| (at(1_000 + 37 * n as u64), Uuid::from_u128(n as u128 + 1), o)).collect()
    }

    /// Reads positions `from..from + want` as the store does: pages of `Walk::to_ask` events, each starting
    /// (inclusive) where the last one got to, capped at `page` events.
    fn read(
        index: &Index,
        all: &[(At, Uuid, bool)],
        from: u64,
        want: usize,
        page: usize,
    ) -> Result<Vec<(u64, Uuid)>, Moved> {
        let mut walk = Walk::new(index.seek(from).unwrap(), from);
        let mut out = Vec::new();
        loop {
            let start = walk.resume_at();
            let ask = walk.to_ask(want - out.len()).min(page);
            let handed: Vec<_> = all.iter().filter(|(a, _, _)| *a >= start).take(ask).collect();
            for &&(here, id, ours) in &handed {
                if let Step::Keep(position) = walk.step(here, id, ours)? {
                    out.push((position, id));
                    if out.len() == want {
                        return Ok(out);
                    }
                }
            }
            if handed.len() < ask {
                return Ok(out);
            }
        }
    }

    #[test]
    fn a_walk_from_any_anchor_in_any_page_size_finds_the_positions_the_index_numbered() {
        // Every third event under the prefix is another application's.
        let pattern: Vec<bool> = (0..400).map(|n| n % 3 != 1).collect();
        let all = log(&pattern);
        let mut index = Index::default();
        let mut numbered = Vec::new();
        for &(here, id, ours) in &all {
            if ours {
                let version = numbered.len() as u64 + 1;
                index.add(here, id, &stream("a"), version).unwrap();
                numbered.push(id);
            }
        }
        let head = index.head();
        for from in [1, 2, ANCHOR_EVERY, ANCHOR_EVERY + 1, 100, head - 1, head] {
            // A page of one would only ever hand over again where it starts; the store asks for two at least.
            for page in [2, 3, 5, 1000] {
                let want = 70.min((head - from + 1) as usize);
                let got = read(&index, &all, from, want, page).unwrap();
                let expected: Vec<_> = (from..from + want as u64).map(|p| (p, numbered[p as usize - 1])).collect();
                assert_eq!(got, expected, "from {from}, pages of {page}");
            }
        }
    }

    #[test]
    fn a_walk_that_finds_another_event_at_an_anchor_reports_the_log_moved() {
        let all = log(&[true; 10]);
        let mut index = Index::default();
        for (n, &(here, id, _)) in all.iter().enumerate() {
            index.add(here, id, &stream("a"), n as u64 + 1).unwrap();
        }
        // The first event was deleted behind the store's back: the second is now first.
        let moved = read(&index, &all[1..], 3, 2, 100).unwrap_err();
        assert_eq!(moved, Moved { position: 1, was: Uuid::from_u128(1), now: Uuid::from_u128(2) });
    }
}
