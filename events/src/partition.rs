//! Partitions: a fixed number of shares of the instances, by a hash of their stream, so that nodes can own
//! shares of the work and readers can follow one share of the log.
//!
//! An instance `<aggregate>-<id>` of one of the [`PARTITIONED`] aggregates is in partition
//! `FNV-1a-32(aggregate ++ id) mod count`: exactly what nats-server's subject mapping
//! `{{partition(count,1,2)}}` computes for its command subject `weft.cmd.<aggregate>.<id>` (the tokens' bytes
//! concatenated, no separator), so a node that owns a partition gets its commands. Any other stream (users,
//! keys, identities) is in no partition.

use serde::{Deserialize, Serialize};

use crate::envelope::StreamName;

/// The aggregates whose instances are partitioned: the command subjects' `<aggregate>` tokens.
pub const PARTITIONED: [&str; 6] = ["document", "workflow", "job", "agent", "schedule", "trigger"];

/// Partitions of a store unless it was created with another number.
pub const DEFAULT_PARTITIONS: u32 = 64;

/// The most partitions a store may have.
pub const MAX_PARTITIONS: u32 = 1024;

/// FNV-1a, 32 bits, over `parts` in turn (as if concatenated).
pub fn fnv1a_32(parts: &[&[u8]]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for part in parts {
        for byte in *part {
            hash ^= u32::from(*byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    }
    hash
}

/// The partition (0 to `count - 1`) of instance `id` of `aggregate` (`job`, `document`, ...).
///
/// # Panics
/// When `count` is 0.
pub fn of(aggregate: &str, id: &str, count: u32) -> u32 {
    assert!(count > 0, "a store has at least one partition");
    fnv1a_32(&[aggregate.as_bytes(), id.as_bytes()]) % count
}

/// The partition of a stream `<aggregate>-<id>` of a partitioned aggregate, `None` for any other stream.
pub fn of_stream(stream: &str, count: u32) -> Option<u32> {
    let (aggregate, id) = stream.split_once('-')?;
    PARTITIONED.contains(&aggregate).then(|| of(aggregate, id, count))
}

/// One partition of a store with `count` of them: what a reader of one share of the log follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Partition {
    /// Its number, below `count`.
    pub index: u32,
    /// How many partitions the store has.
    pub count: u32,
}

impl Partition {
    /// Whether `stream`'s events are in this partition.
    pub fn contains(&self, stream: &StreamName) -> bool {
        of_stream(stream.as_str(), self.count) == Some(self.index)
    }
}

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_vectors_and_concatenates_parts() {
        assert_eq!(fnv1a_32(&[b""]), 0x811c_9dc5);
        assert_eq!(fnv1a_32(&[b"a"]), 0xe40c_292c);
        assert_eq!(fnv1a_32(&[b"foobar"]), 0xbf9c_f968);
        assert_eq!(fnv1a_32(&[b"foo", b"bar"]), fnv1a_32(&[b"foobar"]), "parts are concatenated");
    }

    #[test]
    fn only_the_partitioned_aggregates_streams_are_in_a_partition() {
        let job = StreamName::new("job-0192aa00-0000-7000-8000-000000000001").unwrap();
        let index = of("job", "0192aa00-0000-7000-8000-000000000001", 64);
        assert!(Partition { index, count: 64 }.contains(&job));
        assert!(!Partition { index: (index + 1) % 64, count: 64 }.contains(&job));
        assert_eq!(of_stream("user-alice", 64), None);
        assert_eq!(of_stream("nodash", 64), None);
    }
}
