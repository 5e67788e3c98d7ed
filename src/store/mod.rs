//! Event store backends. Each implements [`weft_events::EventStore`] and runs the store contract suite.
//!
//! - [`sqlite`]: the embedded default.
//! - [`jetstream`]: NATS JetStream, for nodes that share one store.

pub mod jetstream;
pub mod record;
pub mod sqlite;

pub use sqlite::SqliteStore;
