//! Weft's write side.
//!
//! Every aggregate has the same shape ([`Aggregate`]): commands in, a pure `decide` that returns events or a
//! rejection, and a pure `evolve` that folds events into state. Time, ids and the outcomes of side effects
//! come in with the commands, so the same history and command always give the same answer.
//!
//! # Layout
//!
//! - [`aggregate`]: the shape.
//! - [`document`]: a file in object storage, from registration to deletion.
//! - [`agent`]: a configured worker that takes job steps as tasks, up to its concurrency limit.
//! - [`workflow`]: a versioned template of steps forming a DAG.
//! - [`job`]: one run of a workflow: which steps are ready, retries with back-off, completion.
//! - [`schedule`]: a cron rule in a time zone that submits jobs, fired once per occurrence.
//! - [`trigger`]: a selector of uploads that submits a job for each upload it matches.
//! - [`host`]: the actor host on actix: one actor per live instance, activated from its snapshot and
//!   events, one command at a time, idempotent by command id, conflict retries, snapshots, passivation and
//!   supervision of panics.
//! - [`process`]: the process managers that turn events into commands (job orchestrator, worker with the
//!   [`process::worker::Executor`] trait, durable timers), each a checkpointed reader of the whole log.
//! - `testkit` (feature `test-util`): given/when/then, and a scripted executor.
//!
//! It depends only on [`weft_events`] among Weft's crates: it never touches a database or a socket
//! directly; everything it persists goes through [`weft_events::EventStore`]. The clock is read only at the
//! edges: by the process managers, to stamp the commands they send and to fire timers.

pub mod agent;
pub mod aggregate;
pub mod document;
pub mod host;
pub mod job;
pub mod process;
pub mod schedule;
pub mod trace;
pub mod trigger;
pub mod workflow;

#[cfg(feature = "test-util")]
pub mod testkit;

pub use aggregate::Aggregate;
pub use weft_events as events;
