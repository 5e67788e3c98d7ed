//! What `weft serve` is told: where the store, the bus, the HTTP API and the documents are, and what an
//! operator may tune of the actors, the intake and the lease.

use std::path::PathBuf;
use std::time::Duration;

use weft_actors::host;

use crate::lease::LeaseOptions;
use crate::store::open as store;

/// What a node runs on.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeOptions {
    /// The event store's log file (SQLite); its folder is created if missing.
    #[arg(long, default_value = "weft-data/events.db", env = "WEFT_STORE")]
    pub store: PathBuf,
    /// The tenants' keys, which seal their events' personal fields (SQLite; `keys.db` beside `--store` by
    /// default). With `--jetstream` the keys are in JetStream instead. Keep it apart from the log's backups:
    /// erasing a tenant destroys its key here.
    #[arg(long, env = "WEFT_KEYS")]
    pub keys: Option<PathBuf>,
    /// NATS server URLs, comma separated; without it the bus is in process.
    #[arg(long, env = "WEFT_NATS")]
    pub nats: Option<String>,
    /// Largest command body in bytes.
    #[arg(long, default_value_t = crate::protocol::DEFAULT_MAX_BODY_BYTES, env = "WEFT_MAX_BODY_BYTES")]
    pub max_body_bytes: usize,
    /// Longest wait, in seconds, for the next bytes of an HTTP request's body (an upload's too); a body that
    /// stalls longer is answered 408 and its connection closed.
    #[arg(long, default_value_t = crate::http::DEFAULT_BODY_IDLE_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600), env = "WEFT_BODY_TIMEOUT_SECS")]
    pub body_timeout_secs: u64,
    /// Most HTTP connections one client address may hold open; a request on a connection past it is answered
    /// 429 and the connection closed.
    #[arg(long, default_value_t = crate::http::middleware::DEFAULT_MAX_PER_CLIENT, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000), env = "WEFT_MAX_CONNECTIONS_PER_CLIENT")]
    pub max_connections_per_client: usize,
    /// Do not run the process managers (job orchestrator, timers) on this node.
    #[arg(long, env = "WEFT_NO_PROCESSES")]
    pub no_processes: bool,
    /// Where the query API listens (HTTP); port 0 takes a free port.
    #[arg(long, default_value = "127.0.0.1:8080", env = "WEFT_HTTP_ADDR")]
    pub http_addr: std::net::SocketAddr,
    /// The read models' SQLite file (projections of documents, jobs and the event history); its folder is
    /// created if missing. Default: `read.db` beside `--store`.
    #[arg(long, env = "WEFT_READ_MODELS")]
    pub read_models: Option<PathBuf>,
    /// Keep the events in JetStream on the `--nats` servers instead of the SQLite file.
    #[arg(long, requires = "nats", env = "WEFT_JETSTREAM")]
    pub jetstream: bool,
    /// Replicas of the JetStream stream and buckets (1, or 3 or 5 in a cluster).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5), requires = "jetstream", env = "WEFT_JETSTREAM_REPLICAS")]
    pub jetstream_replicas: u8,
    /// The JetStream stream of the events.
    #[arg(long, default_value = "WEFT_EVENTS", requires = "jetstream", env = "WEFT_JETSTREAM_STREAM")]
    pub jetstream_stream: String,
    /// How the actors, the command intake and the lease behave.
    #[command(flatten)]
    pub tuning: Tuning,
    /// Where documents are kept.
    #[command(flatten)]
    pub objects: crate::objects::ObjectsOptions,
    /// The LLM providers agents may use besides `builtin`.
    #[command(flatten)]
    pub providers: crate::agents::ProviderOptions,
    /// A TOML file of these options, keyed by their long names (`http-addr = "0.0.0.0:8080"`); the command
    /// line and the WEFT_* variables win over it.
    #[arg(long, env = "WEFT_CONFIG")]
    pub config: Option<PathBuf>,
}

/// What an operator may tune of a node's actors, command intake and lease (defaults as documented on each).
#[derive(Debug, Clone, clap::Args)]
pub struct Tuning {
    /// Save an aggregate's snapshot every this many events; 0 never.
    #[arg(long, default_value_t = 100, env = "WEFT_SNAPSHOT_EVERY")]
    pub snapshot_every: u64,
    /// Passivate an actor after this many seconds without a command.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400), env = "WEFT_ACTOR_IDLE_SECS")]
    pub actor_idle_secs: u64,
    /// Most live actors; past it the least recently used passivate.
    #[arg(long, default_value_t = 100_000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000_000), env = "WEFT_MAX_LIVE_ACTORS")]
    pub max_live_actors: usize,
    /// Most commands handled at once by this node's intake; past it commands wait on the bus.
    #[arg(long, default_value_t = 4096, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000), env = "WEFT_MAX_COMMANDS_IN_FLIGHT")]
    pub max_commands_in_flight: usize,
    /// How long the process managers' lease lives without renewal, in seconds (nodes sharing JetStream): a
    /// killed holder's managers move to another node after at most this long.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=600), env = "WEFT_LEASE_TTL_SECS")]
    pub lease_ttl_secs: u64,
    /// How often the lease's holder renews it, in seconds; under --lease-ttl-secs.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=300), env = "WEFT_LEASE_RENEW_SECS")]
    pub lease_renew_secs: u64,
}

impl Tuning {
    /// The actor host's options.
    pub fn host(&self) -> host::Options {
        host::Options {
            snapshot_every: self.snapshot_every,
            idle_timeout_ms: self.actor_idle_secs * 1000,
            max_live: self.max_live_actors,
            ..host::Options::default()
        }
    }

    /// The lease's options, with `replicas` for its bucket; refused when it would lapse between renewals.
    pub fn lease(&self, replicas: usize) -> anyhow::Result<LeaseOptions> {
        anyhow::ensure!(
            self.lease_renew_secs < self.lease_ttl_secs,
            "--lease-renew-secs ({}) must be under --lease-ttl-secs ({}): the lease would lapse between renewals",
            self.lease_renew_secs,
            self.lease_ttl_secs
        );
        Ok(LeaseOptions {
            ttl: Duration::from_secs(self.lease_ttl_secs),
            renew_every: Duration::from_secs(self.lease_renew_secs),
            replicas,
            ..LeaseOptions::default()
        })
    }
}

impl NodeOptions {
    /// Where the store is (see [`crate::store::open`]): the JetStream store on `--nats` with `--jetstream`,
    /// else the SQLite file.
    pub fn store_options(&self) -> store::Options {
        let jetstream = self.nats.as_ref().filter(|_| self.jetstream).map(|nats| store::JetStream {
            nats: nats.clone(),
            stream: self.jetstream_stream.clone(),
            replicas: self.jetstream_replicas.into(),
        });
        store::Options { sqlite: self.store.clone(), jetstream, keys: self.keys.clone() }
    }

    /// The read models' file: `--read-models`, or `read.db` beside the store's file (as the keys and the
    /// objects are).
    pub fn read_models_path(&self) -> PathBuf {
        self.read_models.clone().unwrap_or_else(|| {
            self.store.parent().map(|folder| folder.join("read.db")).unwrap_or_else(|| "read.db".into())
        })
    }
}
