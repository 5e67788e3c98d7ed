//! The read side: reads over the projections' read models, free of any transport. What each read model is,
//! one item or a page of a list, job logs, a stream's events, projection status, lag and readiness
//! ([`read`]). The HTTP routes ([`crate::http`]) and the NATS query service ([`crate::bus::queries`]) both
//! answer with these; nothing here imports the write side, the object store or the bus.

pub mod costs;
pub mod params;
pub mod read;
pub mod scope;

pub use read::{Failure, MAX_WAIT, Reads};
pub use scope::Scope;
