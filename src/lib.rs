//! Weft: an event-sourced actor platform for AI document and job processing.
//!
//! This crate is the `weft` binary and everything that touches the world. The facts and the store traits are
//! in [`weft_events`]; the write side is in [`weft_actors`].
//!
//! # Layout
//!
//! In the order data flows through them:
//!
//! - [`store`]: event store backends. [`store::sqlite`] is the embedded default: one SQLite file, one
//!   writer thread with group commit.
//! - [`bus`]: the message bus (NATS, or in process), subjects and wildcards.
//! - [`gateway`]: the process managers' way to the aggregates over the bus.
//! - [`intake`]: the command services on the bus, one per aggregate type.
//! - [`protocol`]: the wire protocol: subjects, command bodies, replies, events.
//! - [`publisher`]: every committed event out on its subject.
//! - [`query`]: the read side: reads over the projections' read models, for every transport.
//! - [`http`]: the HTTP edge: every route, one file per area, and the middleware.
//! - [`selections`]: the read models serving the write side: documents for schedules' selectors.
//! - [`objects`]: object storage for documents (a local folder, S3), signed URLs, storage notifications.
//! - [`agents`]: the providers agents use (builtin, OpenAI, Anthropic), the executor of job steps, the catalog.
//! - [`lease`]: which of the nodes sharing a store runs the process managers and the publisher.
//! - [`cluster`]: partitions of instances and their assignment to nodes (the arithmetic; not yet used).
//! - [`nats`]: NATS: local servers for tests and benchmarks.
//! - [`health`]: what a node runs and how each part is doing, for `/readyz`.
//! - [`node`]: a node, everything wired together: what `weft serve` runs.
//! - [`config`]: `weft serve --config FILE`, the node's options from TOML.
//! - [`cli`]: the command line's client of a running node, one file per noun (`weft job show`, `weft job logs --follow`).
//! - [`demo`]: `weft demo`, the platform at work on a node of its own.
//! - [`replay`]: `weft events`, the operator's tools on a store itself: list, read, follow, fold, export,
//!   import, verify.
//! - [`mod@bench`]: `weft bench`, the benchmarks operators run against a path they choose (`store`, `actors`,
//!   `nats`, `projections`, `documents`, `jobs`, `replay`).

pub mod agents;
pub mod auth;
pub mod bench;
pub mod bus;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod gateway;
pub mod health;
pub mod http;
pub mod intake;
pub mod lease;
pub mod nats;
pub mod node;
pub mod objects;
pub mod protocol;
pub mod publisher;
pub mod query;
pub mod replay;
pub mod selections;
pub mod store;
pub mod telemetry;
