//! Event store backends. Each implements [`weft_events::EventStore`] and runs the store contract suite.
//!
//! - [`sqlite`]: the embedded default.
//! - [`jetstream`]: NATS JetStream, for nodes that share one store.
//! - [`sealed`]: either of them with its events' personal fields sealed by their tenant's key, kept in
//!   [`keys`] (crypto-shredding).
//! - [`open`]: the one way every part of Weft opens a store.

pub mod jetstream;
pub mod keys;
pub mod open;
pub mod record;
pub mod sealed;
pub mod sqlite;

pub use sqlite::SqliteStore;
