//! What `weft serve` is told, in sections: where the store and the bus are, how the HTTP edge limits its
//! clients, what an operator may tune of the actor host, the intake and the process managers, where the
//! documents are and which LLM providers agents may use.
//!
//! Each section is a `clap::Args` flattened into [`NodeOptions`] under its own help heading: one parser reads
//! the command line, the `WEFT_*` variables and the config file (whose keys are the long options, at the top
//! or in a table named after the section, see [`crate::config`]), and checks every value whatever its source.
//! The long options are the same as before the sections existed.

use std::path::PathBuf;
use std::time::Duration;

use weft_actors::host;

use crate::lease::LeaseOptions;
use crate::store::open as store;

/// The name of the admin token file a node writes beside its secret.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// What a node runs on.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeOptions {
    /// Where the events, the keys and the read models are.
    #[command(flatten, next_help_heading = "Store")]
    pub store: StoreSection,
    /// Where the bus is.
    #[command(flatten, next_help_heading = "Bus")]
    pub bus: BusSection,
    /// The HTTP edge.
    #[command(flatten, next_help_heading = "HTTP")]
    pub http: HttpSection,
    /// The actor host.
    #[command(flatten, next_help_heading = "Actor host")]
    pub host: HostSection,
    /// The command intake.
    #[command(flatten, next_help_heading = "Command intake")]
    pub intake: IntakeSection,
    /// Who may use the node.
    #[command(flatten, next_help_heading = "Authentication")]
    pub auth: AuthSection,
    /// The process managers and their lease.
    #[command(flatten, next_help_heading = "Process managers")]
    pub processes: ProcessesSection,
    /// Nodes sharing a JetStream store: membership, partitions and their leases.
    #[command(flatten, next_help_heading = "Cluster")]
    pub cluster: ClusterSection,
    /// Where documents are kept.
    #[command(flatten, next_help_heading = "Objects")]
    pub objects: crate::objects::ObjectsOptions,
    /// The LLM providers agents may use besides `builtin`.
    #[command(flatten, next_help_heading = "Providers")]
    pub providers: crate::agents::ProviderOptions,
    /// A TOML file of these options, keyed by their long names (`http-addr = "0.0.0.0:8080"`), at the top or in
    /// a section's table (`[http]`); the command line and the WEFT_* variables win over it.
    #[arg(long, env = "WEFT_CONFIG", help_heading = "Config")]
    pub config: Option<PathBuf>,
}

/// The sections, by the names a config file's tables take, each with the long names of its options.
pub fn sections() -> Vec<(&'static str, Vec<String>)> {
    fn longs<A: clap::Args>(name: &'static str) -> (&'static str, Vec<String>) {
        let command = A::augment_args(clap::Command::new(name));
        (name, command.get_arguments().filter_map(|a| a.get_long().map(str::to_owned)).collect())
    }
    vec![
        longs::<StoreSection>("store"),
        longs::<BusSection>("bus"),
        longs::<HttpSection>("http"),
        longs::<HostSection>("host"),
        longs::<IntakeSection>("intake"),
        longs::<AuthSection>("auth"),
        longs::<ProcessesSection>("processes"),
        longs::<ClusterSection>("cluster"),
        longs::<crate::objects::ObjectsOptions>("objects"),
        longs::<crate::agents::ProviderOptions>("providers"),
    ]
}

/// Where the events, the tenants' keys and the read models are.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreSection {
    /// The event store's log file (SQLite); its folder is created if missing.
    #[arg(id = "store", long = "store", default_value = "weft-data/events.db", env = "WEFT_STORE")]
    pub log: PathBuf,
    /// The tenants' keys, which seal their events' personal fields (SQLite; `keys.db` beside `--store` by
    /// default). With `--jetstream` the keys are in JetStream instead. Keep it apart from the log's backups:
    /// erasing a tenant destroys its key here.
    #[arg(long, env = "WEFT_KEYS")]
    pub keys: Option<PathBuf>,
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
    /// Keep the events in KurrentDB (EventStoreDB) instead, at this connection string, as KurrentDB's clients
    /// take it: `esdb://user:password@host:2113?tls=true&nodePreference=leader`, or `esdb+discover://` for a
    /// cluster (a build with the `kurrentdb` feature). The tenants' keys stay in `--keys`.
    #[arg(long, conflicts_with = "jetstream", env = "WEFT_KURRENTDB", hide_env_values = true)]
    pub kurrentdb: Option<String>,
    /// The store's namespace in the KurrentDB database: its streams are `<namespace>.<stream>`.
    #[arg(long, default_value = "weft", requires = "kurrentdb", env = "WEFT_KURRENTDB_NAMESPACE")]
    pub kurrentdb_namespace: String,
}

/// Where the bus is.
#[derive(Debug, Clone, clap::Args)]
pub struct BusSection {
    /// NATS server URLs, comma separated; without it the bus is in process.
    #[arg(long, env = "WEFT_NATS")]
    pub nats: Option<String>,
    /// Credentials and TLS for NATS.
    #[command(flatten)]
    pub auth: crate::nats::NatsAuth,
}

/// How the HTTP edge listens and limits its clients.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpSection {
    /// Where the query API listens (HTTP); port 0 takes a free port.
    #[arg(id = "http_addr", long = "http-addr", default_value = "127.0.0.1:8080", env = "WEFT_HTTP_ADDR")]
    pub addr: std::net::SocketAddr,
    /// Largest command body in bytes (over HTTP and over NATS).
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
    /// Another origin (`https://app.example`) whose pages may call the API with a bearer token (CORS); give it
    /// again for more. None by default: browsers keep other origins' pages from the answers.
    #[arg(long, value_parser = crate::http::browsers::parse_origin, value_delimiter = ',', env = "WEFT_CORS_ORIGINS")]
    pub cors_origin: Vec<String>,
}

/// Who may use the node: bearer tokens signed with the node's secret (see `crate::auth`), or nobody checked.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthSection {
    /// The node's token-signing secret (made, owner-only, when missing): `auth.secret` beside --store by
    /// default. Nodes that share a store share it. The node also writes an admin token to `admin.token`
    /// there at each start, which the `weft` command line on this machine reads by itself.
    #[arg(long, env = "WEFT_AUTH_SECRET_FILE")]
    pub auth_secret_file: Option<PathBuf>,
    /// Check nobody: every route open to whoever reaches the node, `Weft-Tenant` and `Weft-Actor` as the caller
    /// says. For a node only its own machine reaches; never on a shared network.
    #[arg(long, env = "WEFT_INSECURE_NO_AUTH", conflicts_with = "oidc_issuer")]
    pub insecure_no_auth: bool,
    /// An OIDC provider whose tokens the node takes too.
    #[command(flatten)]
    pub oidc: crate::auth::oidc::OidcOptions,
    /// Rate limits per identity and per tenant.
    #[command(flatten)]
    pub limits: crate::auth::limits::LimitOptions,
}

/// What an operator may tune of the actor host.
#[derive(Debug, Clone, clap::Args)]
pub struct HostSection {
    /// Save an aggregate's snapshot every this many events; 0 never.
    #[arg(long, default_value_t = 100, env = "WEFT_SNAPSHOT_EVERY")]
    pub snapshot_every: u64,
    /// Passivate an actor after this many seconds without a command.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400), env = "WEFT_ACTOR_IDLE_SECS")]
    pub actor_idle_secs: u64,
    /// Most live actors; past it the least recently used passivate.
    #[arg(long, default_value_t = 100_000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000_000), env = "WEFT_MAX_LIVE_ACTORS")]
    pub max_live_actors: usize,
}

/// What an operator may tune of the command intake.
#[derive(Debug, Clone, clap::Args)]
pub struct IntakeSection {
    /// Most commands handled at once by this node's intake; past it commands wait on the bus.
    #[arg(long, default_value_t = 4096, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000), env = "WEFT_MAX_COMMANDS_IN_FLIGHT")]
    pub max_commands_in_flight: usize,
}

/// How nodes sharing a JetStream store share the work (`docs/cluster.md`).
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterSection {
    /// Take only the commands of the partitions this node holds, through the NATS server's subject mapping of
    /// `weft.cmd.*.*` into partitions (which must be configured: the node checks it at start), holding each
    /// partition through a lease and appending to its streams only while it holds it.
    #[arg(long, requires = "jetstream", env = "WEFT_PARTITION_ROUTING")]
    pub partition_routing: bool,
    /// How many partitions the instances are spread over: the number in the server's mapping
    /// (`partition(N,1,2)`). A JetStream store is created with this many and keeps it; a routing node refuses
    /// to start on a store made with another number.
    #[arg(long, default_value_t = crate::cluster::DEFAULT_PARTITIONS, value_parser = clap::value_parser!(u32).range(1..=1024), env = "WEFT_PARTITIONS")]
    pub partitions: u32,
    /// How long a node's membership and its partitions' leases live without renewal, in milliseconds: a
    /// killed node's partitions move after about this long.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(500..=600_000), env = "WEFT_CLUSTER_TTL_MS")]
    pub cluster_ttl_ms: u64,
    /// How often a node renews its membership and its leases, in milliseconds; at most half of
    /// --cluster-ttl-ms.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=300_000), env = "WEFT_CLUSTER_BEAT_MS")]
    pub cluster_beat_ms: u64,
}

/// A membership or lease that would lapse between renewals.
#[derive(Debug, thiserror::Error)]
#[error(
    "--cluster-beat-ms ({beat}) must be at most half of --cluster-ttl-ms ({ttl}): leases would lapse between renewals"
)]
pub struct LapsingCluster {
    /// The renewal period.
    pub beat: u64,
    /// The time to live.
    pub ttl: u64,
}

impl ClusterSection {
    /// The membership's and the ownership's options, with `replicas` for their buckets.
    pub fn options(
        &self,
        replicas: usize,
    ) -> Result<(crate::cluster::members::MembersOptions, crate::cluster::ownership::OwnershipOptions), LapsingCluster>
    {
        if self.cluster_beat_ms * 2 > self.cluster_ttl_ms {
            return Err(LapsingCluster { beat: self.cluster_beat_ms, ttl: self.cluster_ttl_ms });
        }
        let (ttl, beat) = (Duration::from_millis(self.cluster_ttl_ms), Duration::from_millis(self.cluster_beat_ms));
        let members = crate::cluster::members::MembersOptions { ttl, beat_every: beat, replicas, ..Default::default() };
        let ownership = crate::cluster::ownership::OwnershipOptions {
            partitions: self.partitions,
            ttl,
            renew_every: beat,
            tick: (beat / 4).max(Duration::from_millis(50)),
            replicas,
            ..Default::default()
        };
        Ok((members, ownership))
    }
}

/// Whether this node runs the process managers, and their lease when nodes share a store.
#[derive(Debug, Clone, clap::Args)]
pub struct ProcessesSection {
    /// Do not run the process managers (job orchestrator, timers) on this node.
    #[arg(long, env = "WEFT_NO_PROCESSES")]
    pub no_processes: bool,
    /// How long the process managers' lease lives without renewal, in seconds (nodes sharing JetStream): a
    /// killed holder's managers move to another node after at most this long.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=600), env = "WEFT_LEASE_TTL_SECS")]
    pub lease_ttl_secs: u64,
    /// How often the lease's holder renews it, in seconds; under --lease-ttl-secs.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=300), env = "WEFT_LEASE_RENEW_SECS")]
    pub lease_renew_secs: u64,
}

/// A lease that would lapse between its renewals.
#[derive(Debug, thiserror::Error)]
#[error("--lease-renew-secs ({renew}) must be under --lease-ttl-secs ({ttl}): the lease would lapse between renewals")]
pub struct LapsingLease {
    /// The renewal period.
    pub renew: u64,
    /// The time to live.
    pub ttl: u64,
}

impl HostSection {
    /// The actor host's options.
    pub fn options(&self) -> host::Options {
        host::Options {
            snapshot_every: self.snapshot_every,
            idle_timeout_ms: self.actor_idle_secs * 1000,
            max_live: self.max_live_actors,
            ..host::Options::default()
        }
    }
}

impl ProcessesSection {
    /// The lease's options, with `replicas` for its bucket; refused when it would lapse between renewals.
    pub fn lease(&self, replicas: usize) -> Result<LeaseOptions, LapsingLease> {
        if self.lease_renew_secs >= self.lease_ttl_secs {
            return Err(LapsingLease { renew: self.lease_renew_secs, ttl: self.lease_ttl_secs });
        }
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
    /// the KurrentDB store with `--kurrentdb`, else the SQLite file.
    pub fn store_options(&self) -> store::Options {
        let store = &self.store;
        let jetstream = self.bus.nats.as_ref().filter(|_| store.jetstream).map(|nats| store::JetStream {
            nats: nats.clone(),
            stream: store.jetstream_stream.clone(),
            replicas: store.jetstream_replicas.into(),
            partitions: self.cluster.partitions,
            auth: self.bus.auth.clone(),
        });
        let kurrentdb = store.kurrentdb.as_ref().map(|connection| store::KurrentDb {
            connection: connection.clone(),
            namespace: store.kurrentdb_namespace.clone(),
        });
        store::Options { sqlite: store.log.clone(), jetstream, kurrentdb, keys: store.keys.clone() }
    }

    /// A file beside the store's log (as the keys, the read models and the objects are by default).
    fn beside_the_log(&self, name: &str) -> PathBuf {
        self.store.log.parent().map(|folder| folder.join(name)).unwrap_or_else(|| name.into())
    }

    /// The read models' file: `--read-models`, or `read.db` beside the store's file.
    pub fn read_models_path(&self) -> PathBuf {
        self.store.read_models.clone().unwrap_or_else(|| self.beside_the_log("read.db"))
    }

    /// The token-signing secret's file: `--auth-secret-file`, or `auth.secret` beside the store's file.
    pub fn auth_secret_path(&self) -> PathBuf {
        self.auth.auth_secret_file.clone().unwrap_or_else(|| self.beside_the_log("auth.secret"))
    }

    /// Where a node writes its admin token at start: `admin.token` beside the secret.
    pub fn admin_token_path(&self) -> PathBuf {
        let secret = self.auth_secret_path();
        secret.parent().map(|folder| folder.join(ADMIN_TOKEN_FILE)).unwrap_or_else(|| ADMIN_TOKEN_FILE.into())
    }

    /// The local object store's folder: `--objects-dir`, or `objects` beside the store's file.
    pub fn objects_dir(&self) -> PathBuf {
        self.objects.objects_dir.clone().unwrap_or_else(|| self.beside_the_log("objects"))
    }
}
