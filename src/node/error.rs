//! Why a node did not start, or did not stop cleanly.

use crate::store::open as store;

use super::options;

/// Why a node did not start, or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `Node::start_in`'s arguments are not `weft serve` options.
    #[error(transparent)]
    Args(#[from] clap::Error),
    /// The lease's options would let it lapse.
    #[error(transparent)]
    Lease(#[from] options::LapsingLease),
    /// The cluster's options would let leases lapse.
    #[error(transparent)]
    Cluster(#[from] options::LapsingCluster),
    /// `--partition-routing` without a JetStream store on NATS.
    #[error("--partition-routing needs --nats and --jetstream: partitions are held in JetStream")]
    RoutingAlone,
    /// The store's events are filed under another number of partitions than `--partitions`.
    #[error(
        "the JetStream store was created with {store} partitions, and --partitions is {node}: every node of a \
         store routes by the store's number (set --partitions {store}, and map the server's subjects to as many)"
    )]
    PartitionCount {
        /// The store's.
        store: u32,
        /// The node's.
        node: u32,
    },
    /// The NATS server does not map command subjects into this node's partitions.
    #[error(transparent)]
    Mapping(#[from] crate::cluster::routing::MappingError),
    /// The partition leases' bucket could not be made.
    #[error(transparent)]
    PartitionBucket(#[from] crate::cluster::ownership::BucketError),
    /// The store did not open.
    #[error(transparent)]
    Store(#[from] store::OpenError),
    /// The store did not close cleanly.
    #[error("closing the store: {0}")]
    Close(#[from] weft_events::Error),
    /// No NATS server answered.
    #[error(transparent)]
    Nats(#[from] crate::nats::ConnectError),
    /// The bus refused a subscription.
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
    /// The HTTP address cannot be listened on.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A secret (S3's, the webhook's) could not be read.
    #[error("{0}")]
    Secret(String),
    /// The OIDC provider's options do not fit together.
    #[error("OIDC: {0}")]
    Oidc(String),
    /// The local object store's folder could not be opened.
    #[error("the object store in {folder}: {source}")]
    Objects {
        /// The folder.
        folder: std::path::PathBuf,
        /// Why.
        source: crate::objects::Error,
    },
    /// The read models' folder could not be created.
    #[error("cannot create {folder} for the read models: {source}")]
    ReadModels {
        /// The folder.
        folder: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A projection did not start.
    #[error(transparent)]
    Projection(#[from] weft_projections::runner::Error),
    /// The built-in agents and workflows could not be registered.
    #[error(transparent)]
    Catalog(#[from] crate::agents::catalog::Error),
    /// A provider's options are wrong.
    #[error(transparent)]
    Providers(#[from] crate::agents::ConfigError),
    /// The lease's bucket could not be made.
    #[error(transparent)]
    LeaseBucket(#[from] crate::lease::Error),
    /// This node could not announce itself among the nodes sharing its store.
    #[error(transparent)]
    Membership(#[from] crate::cluster::members::Error),
    /// The token-signing secret could not be read or made, or the admin token not written.
    #[error(transparent)]
    Auth(#[from] crate::auth::token::SecretError),
    /// The signals to stop on could not be listened for.
    #[error("listening for SIGTERM: {0}")]
    Signals(std::io::Error),
}
