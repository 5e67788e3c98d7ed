//! MessagePack encoding of payloads and envelopes.
//!
//! Values are encoded as maps with field names (`rmp_serde::to_vec_named`) rather than positional arrays, so
//! that adding an optional field to an event keeps old events readable. Decoding takes untrusted bytes: it
//! refuses input over [`Limits::max_input_bytes`], nesting deeper than [`Limits::max_depth`], and trailing
//! bytes, and it never panics. It first walks the value's structure without recursion (which bounds the
//! depth and finds the value's end), then deserializes borrowing from the input. Allocation is bounded by the
//! input size: a container may claim no more elements than there are bytes left, and serde caps the capacity
//! it reserves from length prefixes.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Default nesting limit. Weft's own types nest a handful of levels; 64 leaves room for user payloads while
/// keeping recursion far from any thread's stack limit.
pub const DEFAULT_MAX_DEPTH: usize = 64;

/// Default input limit: a little over the store's default payload limit of 1 MiB, so that an envelope holding
/// a maximal payload still decodes.
pub const DEFAULT_MAX_INPUT_BYTES: usize = 1024 * 1024 + 64 * 1024;

/// Bounds on what [`decode_with`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest input, in bytes.
    pub max_input_bytes: usize,
    /// Deepest nesting of arrays, maps and structs.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_input_bytes: DEFAULT_MAX_INPUT_BYTES, max_depth: DEFAULT_MAX_DEPTH }
    }
}

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The value could not be encoded (a map with non-string keys where a string is needed, a failing
    /// `Serialize` impl).
    #[error("cannot encode: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// The bytes are not a valid encoding of the expected type, or nest too deep.
    #[error("cannot decode: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// The input is larger than the limit.
    #[error("input is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// Input size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The bytes are not one well-formed MessagePack value.
    #[error("malformed MessagePack: {detail}")]
    Malformed {
        /// What is wrong.
        detail: String,
    },
    /// A value was decoded but bytes were left after it.
    #[error("{trailing} bytes left after the value")]
    Trailing {
        /// How many bytes were left.
        trailing: usize,
    },
}

/// Encodes a value as MessagePack with named fields.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    Ok(rmp_serde::to_vec_named(value)?)
}

/// Decodes a value with the default [`Limits`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    decode_with(bytes, Limits::default())
}

/// Decodes a value from untrusted bytes within `limits`.
pub fn decode_with<T: DeserializeOwned>(bytes: &[u8], limits: Limits) -> Result<T, Error> {
    check_input(bytes, limits)?;
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(bytes);
    deserializer.set_max_depth(limits.max_depth);
    Ok(T::deserialize(&mut deserializer)?)
}

/// Encodes a value as MessagePack for the wire: named fields, and ids and times in their readable forms
/// (a UUID as its string), as a JSON body would have them, so clients in any language read them alike.
pub fn encode_readable<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    let mut bytes = Vec::new();
    let mut serializer = rmp_serde::Serializer::new(&mut bytes).with_struct_map().with_human_readable();
    value.serialize(&mut serializer)?;
    Ok(bytes)
}

/// Decodes a value written by [`encode_readable`] (or by any MessagePack client) from untrusted bytes.
pub fn decode_readable_with<T: DeserializeOwned>(bytes: &[u8], limits: Limits) -> Result<T, Error> {
    check_input(bytes, limits)?;
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(bytes).with_human_readable();
    deserializer.set_max_depth(limits.max_depth);
    Ok(T::deserialize(&mut deserializer)?)
}

/// Checks untrusted input before a decoder sees it: its size, and that it is one complete value with nothing
/// after it. The walk finds the value's end without recursion; the deserializers cannot tell us, and they
/// bound their own recursion by `max_depth`.
fn check_input(bytes: &[u8], limits: Limits) -> Result<(), Error> {
    if bytes.len() > limits.max_input_bytes {
        return Err(Error::TooLarge { size: bytes.len(), limit: limits.max_input_bytes });
    }
    let used = value_len(bytes)?;
    if used < bytes.len() {
        return Err(Error::Trailing { trailing: bytes.len() - used });
    }
    Ok(())
}

/// The length in bytes of the MessagePack value at the start of `bytes`, checking that it is complete.
/// MessagePack is written in prefix order, so one count of values still to read is all the state needed:
/// no recursion and no allocation, whatever the input.
pub(crate) fn value_len(bytes: &[u8]) -> Result<usize, Error> {
    let malformed = |what: &str| Error::Malformed { detail: what.to_owned() };
    let mut at = 0usize;
    let mut pending: u64 = 1;
    let read_len = |at: usize, n: usize| -> Result<u64, Error> {
        let field = bytes.get(at..at + n).ok_or_else(|| malformed("a length runs past the end"))?;
        Ok(field.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    };
    while pending > 0 {
        pending -= 1;
        let marker = *bytes.get(at).ok_or_else(|| malformed("the value ends early"))?;
        at += 1;
        // (bytes of length field, bytes of fixed payload) or a container.
        let (skip, children): (u64, u64) = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * u64::from(marker & 0x0f)),
            0x90..=0x9f => (0, u64::from(marker & 0x0f)),
            0xa0..=0xbf => (u64::from(marker & 0x1f), 0),
            0xc1 => return Err(malformed("the reserved marker 0xc1")),
            0xc4 | 0xd9 => (read_len(at, 1)? + 1, 0),
            0xc5 | 0xda => (read_len(at, 2)? + 2, 0),
            0xc6 | 0xdb => (read_len(at, 4)? + 4, 0),
            0xc7 => (read_len(at, 1)? + 2, 0),
            0xc8 => (read_len(at, 2)? + 3, 0),
            0xc9 => (read_len(at, 4)? + 5, 0),
            0xca => (4, 0),
            0xcb => (8, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xce | 0xd2 => (4, 0),
            0xcf | 0xd3 => (8, 0),
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => {
                let n = read_len(at, 2)?;
                at += 2;
                (0, n)
            }
            0xdd => {
                let n = read_len(at, 4)?;
                at += 4;
                (0, n)
            }
            0xde => {
                let n = read_len(at, 2)?;
                at += 2;
                (0, 2 * n)
            }
            0xdf => {
                let n = read_len(at, 4)?;
                at += 4;
                (0, 2 * n)
            }
        };
        at = usize::try_from(skip)
            .ok()
            .and_then(|skip| at.checked_add(skip))
            .filter(|end| *end <= bytes.len())
            .ok_or_else(|| malformed("a string, binary or number runs past the end"))?;
        if children > 0 {
            // Every element takes at least one byte, so a count beyond what is left is a lie.
            if pending + children > (bytes.len() - at) as u64 {
                return Err(malformed("a container claims more elements than there are bytes"));
            }
            pending += children;
        }
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde::Deserialize;

    use super::*;
    use crate::envelope::{Envelope, StreamName, Timestamp};

    /// Any value MessagePack can hold, to decode arbitrary bytes into.
    #[derive(Debug, Deserialize)]
    #[serde(untagged)]
    #[allow(dead_code)] // only decoded, never read
    enum Any {
        Nil(()),
        Bool(bool),
        Int(i64),
        Uint(u64),
        Float(f64),
        Str(String),
        Bin(serde_bytes_shim::Buf),
        Array(Vec<Any>),
        Map(BTreeMap<String, Any>),
    }

    mod serde_bytes_shim {
        #[derive(Debug)]
        pub struct Buf(#[allow(dead_code)] pub Vec<u8>);
        impl<'de> serde::Deserialize<'de> for Buf {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                bytes::Bytes::deserialize(d).map(|b| Buf(b.to_vec()))
            }
        }
    }

    fn envelope_strategy() -> impl Strategy<Value = Envelope> {
        (
            any::<u128>(),
            "[a-z0-9_-]{1,40}",
            1..u64::MAX,
            1..u64::MAX,
            "[a-z.]{1,30}",
            any::<u32>(),
            any::<i64>(),
            "[a-z:]{1,20}",
            proptest::option::of(any::<u128>()),
            proptest::option::of(any::<u128>()),
            "[ -~]{0,40}",
            proptest::collection::vec(any::<u8>(), 0..512),
        )
            .prop_map(
                |(id, stream, version, position, event_type, schema, at, tenant, corr, cause, actor, payload)| {
                    Envelope {
                        event_id: uuid::Uuid::from_u128(id),
                        stream: StreamName::new(stream).unwrap(),
                        version,
                        position,
                        event_type: event_type.into(),
                        schema_version: schema,
                        recorded_at: Timestamp(at),
                        tenant: tenant.into(),
                        correlation_id: corr.map(uuid::Uuid::from_u128),
                        causation_id: cause.map(uuid::Uuid::from_u128),
                        actor: actor.into(),
                        payload: payload.into(),
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn envelopes_round_trip(envelope in envelope_strategy()) {
            let bytes = encode(&envelope).unwrap();
            let back: Envelope = decode(&bytes).unwrap();
            prop_assert_eq!(back, envelope);
        }

        #[test]
        fn nested_payload_values_round_trip(value in proptest::collection::btree_map("[a-z]{0,8}", proptest::collection::vec(any::<i64>(), 0..8), 0..8)) {
            let bytes = encode(&value).unwrap();
            let back: BTreeMap<String, Vec<i64>> = decode(&bytes).unwrap();
            prop_assert_eq!(back, value);
        }

        #[test]
        fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode::<Envelope>(&bytes);
            let _ = decode::<Any>(&bytes);
        }

        #[test]
        fn decoding_a_damaged_envelope_never_panics(envelope in envelope_strategy(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut bytes = encode(&envelope).unwrap();
            let i = at.index(bytes.len());
            bytes[i] = byte;
            let _ = decode::<Envelope>(&bytes);
            let truncated = &bytes[..i];
            prop_assert!(decode::<Envelope>(truncated).is_err() || truncated.len() == bytes.len());
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        // 100,000 nested one-element arrays: recursion without a depth limit would overflow the stack.
        let mut bytes = vec![0x91u8; 100_000];
        bytes.push(0xc0);
        let err = decode_with::<Any>(&bytes, Limits { max_input_bytes: 1 << 20, max_depth: 64 }).unwrap_err();
        assert!(matches!(err, Error::Decode(rmp_serde::decode::Error::DepthLimitExceeded)), "{err}");
    }

    #[test]
    fn a_huge_length_prefix_does_not_allocate_it() {
        // An array header claiming 2^32-1 elements, followed by nothing.
        let bytes = [0xdd, 0xff, 0xff, 0xff, 0xff];
        assert!(decode::<Vec<u64>>(&bytes).is_err());
        // A bin header claiming 4 GiB.
        let bytes = [0xc6, 0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        assert!(decode::<bytes::Bytes>(&bytes).is_err());
    }

    proptest! {
        #[test]
        fn the_structure_walk_agrees_with_the_encoder(value in proptest::collection::vec((any::<i64>(), "[a-z]{0,40}", proptest::collection::vec(any::<u8>(), 0..300), any::<f64>(), any::<bool>(), proptest::option::of(any::<u32>())), 0..20)) {
            let bytes = encode(&value).unwrap();
            prop_assert_eq!(value_len(&bytes).unwrap(), bytes.len());
            for cut in 0..bytes.len() {
                prop_assert!(value_len(&bytes[..cut]).is_err());
            }
        }
    }

    #[test]
    fn oversized_input_and_trailing_bytes_are_typed_errors() {
        let big = vec![0u8; 10];
        assert!(matches!(
            decode_with::<u8>(&big, Limits { max_input_bytes: 5, max_depth: 8 }),
            Err(Error::TooLarge { size: 10, limit: 5 })
        ));
        let mut bytes = encode(&7u8).unwrap();
        bytes.push(0);
        assert!(matches!(decode::<u8>(&bytes), Err(Error::Trailing { trailing: 1 })));
    }
}
