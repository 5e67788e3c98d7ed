//! Event store backends. Each implements [`weft_events::EventStore`] and runs the store contract suite.
//!
//! - [`sqlite`]: the embedded default.

pub mod sqlite;

pub use sqlite::SqliteStore;
