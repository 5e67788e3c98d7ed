//! The integration tests of the `weft` crate, in one binary: each test binary links the whole dependency tree,
//! and with one binary per file linking dominated the build of the suite.

mod actors_on_sqlite;
mod agents;
mod auth;
mod auth_nats;
mod bus;
mod cli;
mod client;
mod compose;
mod documents;
mod erasure;
mod identities;
mod intake;
mod job_crash;
mod nats_e2e;
mod nats_faults;
mod nats_restart;
mod nats_server;
mod nats_tls;
mod objects;
mod oidc;
mod openapi;
mod projection_crash;
mod protocol_doc;
mod providers;
mod query_api;
mod quickstart;
mod reaped;
mod replay;
mod schemas;
mod serve;
mod store_corruption;
mod store_crash;
mod store_jetstream;
mod support;
mod triggers;
