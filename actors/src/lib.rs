//! Weft's write side.
//!
//! This crate will hold one module per aggregate (`document`, `job`, `agent`, `workflow`, `schedule`), each
//! with the same shape — commands, state, a pure `decide` and `evolve` — plus the actor host that activates an
//! aggregate from its snapshot and events, passivates it when idle and supervises it, the process managers
//! that turn events into commands, and a given/when/then test kit behind the `test-util` feature.
//!
//! It depends only on [`weft_events`] among Weft's crates: it never touches a database, a socket or a
//! clock directly; everything it persists goes through [`weft_events::EventStore`].

pub use weft_events as events;
