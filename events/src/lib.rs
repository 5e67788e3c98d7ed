//! Weft's facts, and nothing that does I/O.
//!
//! Every state change in Weft is an event appended to an event store. This crate defines what an event is and
//! what a store promises; the backends that keep events on disk or in NATS live in the `weft` crate.
//!
//! # Layout
//!
//! In the order data flows through them:
//!
//! - [`domain`]: the events of each aggregate (`document`, `job`, `workflow`, ...) as Rust types, with stable
//!   type names and schema versions, and typed ids that name their streams.
//! - [`envelope`]: what a caller hands to a store ([`NewEvent`]) and what the store hands back ([`Envelope`]):
//!   the payload plus its identity (`event_id`, `stream`, `version`, `position`) and metadata (`tenant`,
//!   `correlation_id`, `causation_id`, `actor`, `recorded_at`).
//! - [`codec`]: MessagePack encoding of payloads and envelopes, with decoding bounded in size and depth so
//!   that bytes from outside can never exhaust memory or the stack.
//! - [`seal`]: crypto-shredding of personal payload fields with per-tenant keys (no key store here: the
//!   `weft` crate keeps the keys).
//! - [`store`]: the store traits ([`EventWrite`] to append, [`EventRead`] to read, [`EventStore`] for both),
//!   expected versions and conflicts, limits, snapshots and typed errors.
//! - [`subscription`]: subscribe-all, which catches up from storage and then follows live appends with no
//!   gap and no duplicate, for any backend.
//! - [`partition`]: the fixed shares of the instances (by a hash of their stream) that nodes own and readers
//!   follow one at a time.
//! - [`health`]: how a long-lived task that follows the log is doing (running, retrying, restarting), for a
//!   node's readiness check.
//! - [`memory`]: an in-memory backend for fast tests of the layers above; it passes the same contract suite
//!   as the durable backends.
//! - `contract` (feature `test-util`): the store contract suite every backend runs.

pub mod codec;
pub mod domain;
pub mod envelope;
pub mod health;
pub mod memory;
pub mod partition;
pub mod seal;
pub mod store;
pub mod subscription;

#[cfg(feature = "test-util")]
pub mod contract;

pub use domain::{DecodeError, DomainEvent};
pub use envelope::{Envelope, NameError, NewEvent, StreamName, Timestamp};
pub use health::Health;
pub use memory::MemoryStore;
pub use partition::Partition;
pub use store::{
    Appended, Checkpoint, Direction, Error, EventRead, EventStore, EventWrite, ExpectedVersion, Limits, Snapshot,
};
pub use subscription::Subscription;
