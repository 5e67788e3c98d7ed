//! A node's place among the nodes sharing its JetStream store (`crate::cluster`): its entry in the membership
//! and the task that keeps it alive, and with `--partition-routing` the partitions it holds and the routing
//! of their commands.

use crate::cluster::members::{Members, MembersOptions};
use crate::cluster::ownership::{OwnershipOptions, Partitions};
use crate::health::Board;
use crate::store::open::Opened;

use super::{Error, NodeOptions};

/// This node as the membership lists it, serving HTTP on `http`.
pub(super) fn this_member(http: std::net::SocketAddr) -> crate::cluster::members::Member {
    let now = weft_events::Timestamp::now().0;
    crate::cluster::members::Member {
        id: crate::cluster::members::node_id(),
        http: Some(http.to_string()),
        started_at: now,
        beat_at: now,
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// Announces this node among those sharing its JetStream store and keeps its entry alive, watched on `board`.
pub(super) async fn join(
    client: async_nats::Client,
    http: std::net::SocketAddr,
    options: MembersOptions,
    board: &Board,
) -> Result<(Members, actix_rt::task::JoinHandle<()>), Error> {
    let members = Members::join(client, &options, this_member(http)).await?;
    let health = weft_events::Health::default();
    board.watch("membership", health.clone());
    let beating = members.clone();
    let beats = actix_rt::spawn(async move {
        health.running();
        loop {
            actix_rt::time::sleep(options.beat_every).await;
            match beating.beat().await {
                Ok(()) => health.running(),
                Err(error) => {
                    tracing::warn!(%error, "renewing this node's membership");
                    health.retrying(error.to_string());
                }
            }
        }
    });
    Ok((members, beats))
}

/// With `--partition-routing`: checks that the store's events are filed under the node's number of partitions
/// (or under none: a store made before partitions) and that the NATS server maps command subjects into as
/// many, and fences the store's appends by the partitions this node will hold (none yet). `None` without it.
pub(super) async fn partitions(
    options: &NodeOptions,
    store: &Opened,
    client: Option<&async_nats::Client>,
) -> Result<Option<Partitions>, Error> {
    if !options.cluster.partition_routing {
        return Ok(None);
    }
    let (Opened::JetStream(sealed), Some(client)) = (store, client) else { return Err(Error::RoutingAlone) };
    match sealed.inner().partitions() {
        Some(count) if count != options.cluster.partitions => {
            return Err(Error::PartitionCount { store: count, node: options.cluster.partitions });
        }
        Some(_) => {}
        None => tracing::warn!(
            "the JetStream store was made before partitions (its events are not filed by partition): commands are \
             routed by partition, but the process managers run on one node at a time under a lease; copy the \
             log to a new store to share them"
        ),
    }
    crate::cluster::routing::check_mapping(client, options.cluster.partitions).await?;
    let partitions = Partitions::new(options.cluster.partitions);
    sealed.inner().fence_by(partitions.clone());
    Ok(Some(partitions))
}

/// The partitions a node holds, and the tasks that hold them and route their commands.
pub(super) struct Routing {
    partitions: Partitions,
    kv: async_nats::jetstream::kv::Store,
    options: OwnershipOptions,
    ownership: actix_rt::task::JoinHandle<()>,
    router: actix_rt::task::JoinHandle<()>,
}

impl Routing {
    /// Starts holding this node's partitions (`ownership`) and routing their commands to `inboxes`, each task
    /// watched on `board`.
    pub(super) async fn start(
        client: async_nats::Client,
        members: Members,
        inboxes: crate::cluster::routing::Inboxes,
        options: OwnershipOptions,
        board: &Board,
    ) -> Result<Self, Error> {
        let partitions = inboxes.partitions().clone();
        let kv = crate::cluster::ownership::bucket(client.clone(), &options).await?;
        let (held, routed) = (weft_events::Health::default(), weft_events::Health::default());
        board.watch("partitions", held.clone());
        board.watch("partition routing", routed.clone());
        let router = actix_rt::spawn(crate::cluster::routing::run(client, inboxes, routed));
        let ownership = actix_rt::spawn(crate::cluster::ownership::run(
            kv.clone(),
            members,
            partitions.clone(),
            options.clone(),
            held,
        ));
        partitions.settled(options.ttl + std::time::Duration::from_secs(2)).await;
        Ok(Self { partitions, kv, options, ownership, router })
    }

    /// The partitions held, and the leases' bucket (for `GET /cluster`).
    pub(super) fn status(&self) -> (Partitions, async_nats::jetstream::kv::Store) {
        (self.partitions.clone(), self.kv.clone())
    }

    /// Hands every partition over (its commands in flight answered first), then stops routing.
    pub(super) async fn stop(self) {
        self.ownership.abort();
        crate::cluster::ownership::release_all(&self.kv, &self.partitions, &self.options).await;
        self.router.abort();
    }
}

/// The partitions whose process managers this node runs per partition: its own, when it routes by partition
/// over a store whose events are filed by partition.
pub(super) fn shares(partitions: Option<&Partitions>, store: &Opened) -> Option<Partitions> {
    match (partitions, store) {
        (Some(partitions), Opened::JetStream(sealed)) if sealed.inner().partitions() == Some(partitions.count()) => {
            Some(partitions.clone())
        }
        _ => None,
    }
}
