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

/// Counts a commit of `appends` appends holding `events` events, made durable in `took` (the store's metrics:
/// [`crate::telemetry::metrics`]).
pub(crate) fn committed(appends: usize, events: usize, took: std::time::Duration) {
    metrics::counter!("weft_store_appends_total").increment(appends as u64);
    metrics::counter!("weft_store_fsyncs_total").increment(1);
    metrics::histogram!("weft_store_commit_events").record(events as f64);
    metrics::histogram!("weft_store_commit_duration_seconds").record(took);
}
