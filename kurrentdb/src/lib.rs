//! Weft's event store on KurrentDB (formerly EventStoreDB), for teams that already run it.
//!
//! The store keeps every promise of [`weft_events::store`] and passes the same contract suite as the SQLite
//! and JetStream stores (`tests/contract.rs`, against the server `WEFT_TEST_KURRENTDB` names).
//!
//! # Layout
//!
//! In the order data flows through them:
//!
//! - [`names`]: where a store's events, snapshots and checkpoints are in the database (a namespace of
//!   streams), and how a connection string is shown without its secrets.
//! - [`record`]: a Weft event as a KurrentDB record (ids, types, revisions, metadata), and back.
//! - [`index`]: Weft's dense positions, numbered from `$all`'s order by every process alike.
//! - [`follow`]: the process's numbering kept up by following `$all`, which appends and subscriptions wait on.
//! - [`store`]: [`KurrentDbStore`], the reads, appends, snapshots and checkpoints.
//!
//! The tenants' keys that seal personal fields are not here: the `weft` crate keeps them beside the node,
//! as it does for a SQLite store.

pub mod follow;
pub mod index;
pub mod names;
pub mod record;
pub mod store;

pub use names::Names;
pub use store::{KurrentDbStore, OpenError, Options};
