//! A Weft node: the store, the actor hosts, the command intake on the bus, the process managers and the event
//! publisher, wired together. `weft serve` runs one.
//!
//! Without a NATS URL the bus is in process (the embedded default: no network); with one, commands come
//! from NATS and events go out on it, and several nodes may share the command load in queue group `weft`.
//! Run the process managers on one node only (`--no-processes` on the others): a second worker would
//! take a task another worker is running as interrupted.
//!
//! The store is a SQLite file by default; with `--jetstream` it is JetStream on the NATS servers, which
//! nodes on several machines share.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use weft_actors::host;
use weft_actors::process::{self, Hosts, Processes, RunOptions, Running};
use weft_events::EventStore;

use crate::bus::Bus;
use crate::bus::memory::MemoryBus;
use crate::bus::nats::NatsBus;
use crate::gateway::BusGateway;
use crate::intake::{Intake, IntakeOptions};
use crate::publisher::Publisher;
use crate::store::jetstream::{JetStreamConfig, JetStreamStore};
use crate::store::sqlite::{self, SqliteStore};

/// What a node runs on.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeOptions {
    /// The event store's log file (SQLite); its folder is created if missing.
    #[arg(long, default_value = "weft-data/events.db", env = "WEFT_STORE")]
    pub store: PathBuf,
    /// NATS server URLs, comma separated; without it the bus is in process.
    #[arg(long, env = "WEFT_NATS")]
    pub nats: Option<String>,
    /// Largest command body in bytes.
    #[arg(long, default_value_t = crate::protocol::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Do not run the process managers (job orchestrator, timers) on this node.
    #[arg(long)]
    pub no_processes: bool,
    /// Keep the events in JetStream on the `--nats` servers instead of the SQLite file.
    #[arg(long, requires = "nats")]
    pub jetstream: bool,
    /// Replicas of the JetStream stream and buckets (1, or 3 or 5 in a cluster).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5), requires = "jetstream")]
    pub jetstream_replicas: u8,
    /// The JetStream stream of the events.
    #[arg(long, default_value = "WEFT_EVENTS", requires = "jetstream")]
    pub jetstream_stream: String,
}

/// The store a node opened.
#[derive(Clone)]
enum Store {
    Sqlite(SqliteStore),
    JetStream(JetStreamStore),
}

impl Store {
    async fn open(options: &NodeOptions) -> anyhow::Result<Self> {
        match (&options.nats, options.jetstream) {
            (Some(url), true) => {
                let client = crate::nats::connect(url, "weft-store").await?;
                let config = JetStreamConfig {
                    stream: options.jetstream_stream.clone(),
                    replicas: options.jetstream_replicas.into(),
                    ..JetStreamConfig::default()
                };
                Ok(Self::JetStream(JetStreamStore::open(client, config).await?))
            }
            _ => Ok(Self::Sqlite(SqliteStore::open(sqlite::Options::new(&options.store))?)),
        }
    }

    fn shared(&self) -> Arc<dyn EventStore> {
        match self {
            Self::Sqlite(store) => Arc::new(store.clone()),
            Self::JetStream(store) => Arc::new(store.clone()),
        }
    }

    async fn close(self) -> anyhow::Result<()> {
        if let Self::Sqlite(store) = self {
            store.close().await?;
        }
        Ok(())
    }

    fn describe(&self, options: &NodeOptions) -> String {
        match self {
            Self::Sqlite(_) => format!("SQLite {}", options.store.display()),
            Self::JetStream(store) => {
                format!("JetStream stream {} ({} replicas)", store.config().stream, store.config().replicas)
            }
        }
    }
}

/// A running node.
pub struct Node {
    store: Store,
    bus: Arc<dyn Bus>,
    intake: Intake,
    processes: Option<Processes>,
    publisher: Running,
}

impl Node {
    /// Opens the store, connects the bus and starts everything. Must be called on an actix system.
    pub async fn start(options: &NodeOptions) -> anyhow::Result<Self> {
        let store = Store::open(options).await?;
        let shared = store.shared();
        let bus: Arc<dyn Bus> = match &options.nats {
            Some(url) => Arc::new(NatsBus::new(crate::nats::connect(url, "weft").await?)),
            None => Arc::new(MemoryBus::default()),
        };
        let hosts = Hosts::new(shared.clone(), host::Options::default());
        let limits = crate::protocol::BodyLimits { max_bytes: options.max_body_bytes, ..Default::default() };
        let intake = Intake::start(bus.clone(), hosts, IntakeOptions { limits, ..IntakeOptions::default() }).await?;
        let processes = (!options.no_processes).then(|| {
            let gateway = BusGateway::new(bus.clone(), shared.clone(), Duration::from_secs(10));
            // No executor until agents can run tasks: assigned tasks wait, and time out.
            Processes::start(gateway, shared.clone(), None, RunOptions::default())
        });
        let publisher = process::start(Publisher::new(bus.clone()), shared, RunOptions::default());
        Ok(Self { store, bus, intake, processes, publisher })
    }

    /// The bus the node serves on.
    pub fn bus(&self) -> Arc<dyn Bus> {
        self.bus.clone()
    }

    /// Stops taking commands, stops the processes (saving their checkpoints) and closes the store.
    pub async fn stop(self) -> anyhow::Result<()> {
        drop(self.intake);
        if let Some(processes) = self.processes {
            processes.stop().await.map_err(anyhow::Error::msg)?;
        }
        self.publisher.stop().await.map_err(anyhow::Error::msg)?;
        self.bus.flush().await.ok();
        self.store.close().await?;
        Ok(())
    }
}

/// `weft serve`: runs a node until Ctrl-C or SIGTERM.
pub async fn serve(options: NodeOptions) -> anyhow::Result<()> {
    let node = Node::start(&options).await?;
    let store = node.store.describe(&options);
    match &options.nats {
        Some(url) => eprintln!("weft: serving commands on NATS {url}, store {store}"),
        None => eprintln!("weft: serving on the in-process bus, store {store}"),
    }
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    eprintln!("weft: stopping");
    node.stop().await
}
