//! Which partitions this node holds, through one lease per partition in a JetStream KV bucket, and the task
//! that takes, renews and hands them over as the membership changes.
//!
//! Every [`OwnershipOptions::tick`] the task reads the live nodes ([`super::members`]) and computes the
//! partitions this node should own ([`super::balanced`]: even shares, moving as few as it can from their present
//! holders, which it follows by watching the bucket). It then:
//!
//! - **takes** each of those it does not hold by creating its key (`create`: only if the key holds nothing, or a
//!   deletion). It succeeds once the old owner has released the key, or once the old owner's last renewal aged
//!   out of the bucket (its `max_age` is the lease's time-to-live, counted by the server alone). The revision
//!   of that write is the partition's **fencing token**: revisions of a bucket only grow, so each new owner's
//!   token is greater than every earlier one;
//! - **renews** each one it holds every [`OwnershipOptions::renew_every`], by rewriting its key against the
//!   revision it last wrote. A renewal refused means another node holds it now: it is dropped at once;
//! - **hands over** each one it holds but should not: it stops serving it (the router drains its commands in
//!   flight, see [`super::routing`]), then deletes its key against its revision, so the new owner's next take
//!   succeeds without waiting for the time-to-live.
//!
//! A holder trusts its lease until `ttl - renew_every` after it *sent* its last successful renewal
//! ([`Held::valid_until`]); the server keeps the key until `ttl` after it *stored* it, later. The store asks
//! [`Partitions::fence`] before every append to a partitioned stream and refuses one to a partition this node
//! does not hold or no longer trusts, so a node that was paused, cut off or slow to renew stops writing before
//! another can take its partitions; what it appends carries its token (`docs/cluster.md`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use weft_events::StreamName;

use super::members::Members;

/// Settings of the partition leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnershipOptions {
    /// The KV bucket of the leases, one key per partition.
    pub bucket: String,
    /// How many partitions the store has.
    pub partitions: u32,
    /// How long a lease lives without renewal (the bucket's `max_age`).
    pub ttl: Duration,
    /// How often a holder renews its leases.
    pub renew_every: Duration,
    /// How often the task looks at the membership and tries to take what it should own.
    pub tick: Duration,
    /// Longest wait for a handed-over partition's commands in flight before its lease is released anyway (one
    /// still running then is refused its append, as unavailable, and its sender tries the new owner).
    pub drain_timeout: Duration,
    /// Replicas of the bucket.
    pub replicas: usize,
}

impl Default for OwnershipOptions {
    fn default() -> Self {
        Self {
            bucket: "weft_partitions".into(),
            partitions: super::DEFAULT_PARTITIONS,
            ttl: Duration::from_secs(3),
            renew_every: Duration::from_secs(1),
            tick: Duration::from_millis(250),
            drain_timeout: Duration::from_secs(1),
            replicas: 1,
        }
    }
}

/// A partition this node holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The fencing token: the revision of the write that took the lease.
    pub token: u64,
    /// The revision of this node's last write of the key.
    pub revision: u64,
    /// Until when this node may write the partition's streams without a further renewal.
    pub valid_until: Instant,
    /// When it was taken, µs since the epoch.
    pub since: i64,
}

/// What a lease's key holds: who holds it, since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseValue {
    /// The holder's node id.
    pub node: String,
    /// When it was taken, µs since the epoch.
    pub since: i64,
}

/// The partition and fencing token an append to a partitioned stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    /// The stream's partition.
    pub partition: u32,
    /// The holder's token for it.
    pub token: u64,
}

impl Fence {
    /// The header value stored with the append's messages: `<partition>:<token>`.
    pub fn header(&self) -> String {
        format!("{}:{}", self.partition, self.token)
    }
}

/// The header the JetStream store writes a fenced append's [`Fence::header`] under.
pub const FENCE_HEADER: &str = "Weft-Fence";

pub use weft_events::partition::PARTITIONED;

/// The partition of a stream `<aggregate>-<uuid>` of a partitioned aggregate (as its commands are mapped),
/// `None` for any other stream (users, keys, checkpoints: not partitioned).
pub fn partition_of_stream(stream: &str, partitions: u32) -> Option<u32> {
    weft_events::partition::of_stream(stream, partitions)
}

/// The partitions this node holds, shared by the ownership task, the router and the store. Cheap to clone.
#[derive(Clone)]
pub struct Partitions {
    inner: Arc<Shared>,
}

struct Shared {
    count: u32,
    held: RwLock<BTreeMap<u32, Held>>,
    /// The partitions whose commands this node takes: those held, less those being handed over.
    serving: watch::Sender<BTreeSet<u32>>,
    /// Per partition, the router's subscription to it (1) and its commands in flight.
    routed: RwLock<BTreeMap<u32, usize>>,
    /// Rounds of the ownership task so far.
    rounds: watch::Sender<u64>,
}

impl std::fmt::Debug for Partitions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partitions").field("count", &self.inner.count).finish_non_exhaustive()
    }
}

/// Why an append to a partitioned stream is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fenced {
    /// Another node owns the stream's partition (or nobody holds it yet).
    #[error("this node does not hold partition {0} (its commands go to its owner)")]
    NotHeld(u32),
    /// This node held it but could not renew its lease in time: another node may hold it now.
    #[error("this node's lease on partition {0} lapsed before it could renew it")]
    Lapsed(u32),
}

impl Partitions {
    /// None held yet, of `count` partitions.
    pub fn new(count: u32) -> Self {
        let (serving, _) = watch::channel(BTreeSet::new());
        Self {
            inner: Arc::new(Shared {
                count,
                held: RwLock::default(),
                serving,
                routed: RwLock::default(),
                rounds: watch::channel(0).0,
            }),
        }
    }

    /// How many partitions the store has.
    pub fn count(&self) -> u32 {
        self.inner.count
    }

    /// The partitions held now, with their leases.
    pub fn held(&self) -> BTreeMap<u32, Held> {
        self.inner.held.read().expect("held lock").clone()
    }

    /// The partitions whose commands this node takes, as they change.
    pub fn serving(&self) -> watch::Receiver<BTreeSet<u32>> {
        self.inner.serving.subscribe()
    }

    /// What an append to `stream` carries, or why this node may not append to it: `Ok(None)` for a stream of no
    /// partition.
    pub fn fence(&self, stream: &StreamName) -> Result<Option<Fence>, Fenced> {
        let Some(partition) = partition_of_stream(stream.as_str(), self.inner.count) else { return Ok(None) };
        match self.inner.held.read().expect("held lock").get(&partition) {
            None => Err(Fenced::NotHeld(partition)),
            Some(held) if Instant::now() >= held.valid_until => Err(Fenced::Lapsed(partition)),
            Some(held) => Ok(Some(Fence { partition, token: held.token })),
        }
    }

    /// Whether this node may run commands on `stream` itself (it holds the stream's partition, or the stream
    /// has none).
    pub fn holds(&self, stream: &StreamName) -> bool {
        self.fence(stream).is_ok()
    }

    /// The router subscribed to `partition`, or took one of its commands: it holds the partition until
    /// [`Partitions::ended`] is called as often.
    pub fn began(&self, partition: u32) {
        *self.inner.routed.write().expect("routed lock").entry(partition).or_default() += 1;
    }

    /// The router's subscription to `partition` is drained, or one of its commands was answered.
    pub fn ended(&self, partition: u32) {
        let mut routed = self.inner.routed.write().expect("routed lock");
        if let Some(n) = routed.get_mut(&partition) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                routed.remove(&partition);
            }
        }
    }

    /// Waits (up to `timeout`) until the ownership task has been round once and the router subscribes to every
    /// partition this node holds: a node starting alone then serves every partition before it sends a command.
    pub async fn settled(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let serving = self.inner.serving.borrow().clone();
            let routed = self.inner.routed.read().expect("routed lock").keys().copied().collect::<BTreeSet<_>>();
            if *self.inner.rounds.borrow() > 0 && serving.is_subset(&routed) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether the router has let go of `partition`: no subscription, no command in flight.
    fn drained(&self, partition: u32) -> bool {
        !self.inner.routed.read().expect("routed lock").contains_key(&partition)
    }

    fn set_serving(&self) {
        let held: BTreeSet<u32> = self.inner.held.read().expect("held lock").keys().copied().collect();
        self.inner.serving.send_if_modified(|serving| {
            let changed = *serving != held;
            *serving = held;
            changed
        });
    }

    fn stop_serving(&self, partition: u32) {
        self.inner.serving.send_if_modified(|serving| serving.remove(&partition));
    }

    fn insert(&self, partition: u32, held: Held) {
        self.inner.held.write().expect("held lock").insert(partition, held);
    }

    fn remove(&self, partition: u32) {
        self.inner.held.write().expect("held lock").remove(&partition);
    }
}

/// Why the leases' bucket could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("partition leases' bucket {bucket}: {reason}")]
pub struct BucketError {
    /// The bucket.
    pub bucket: String,
    /// Why.
    pub reason: String,
}

/// The leases' bucket (created if missing).
pub async fn bucket(
    client: async_nats::Client,
    options: &OwnershipOptions,
) -> Result<async_nats::jetstream::kv::Store, BucketError> {
    let description = "Weft partition leases: which node holds each partition";
    crate::nats::expiring_bucket(client, &options.bucket, description, options.ttl, options.replicas)
        .await
        .map_err(|reason| BucketError { bucket: options.bucket.clone(), reason })
}

/// Who holds each partition, as the bucket says: partition to (holder, since, revision, last write).
pub async fn holders(
    kv: &async_nats::jetstream::kv::Store,
    partitions: u32,
) -> Result<BTreeMap<u32, (LeaseValue, u64, i64)>, String> {
    let mut found = BTreeMap::new();
    for partition in 0..partitions {
        let entry = kv.entry(partition.to_string()).await.map_err(|e| e.to_string())?;
        let Some(entry) = entry.filter(|e| e.operation == async_nats::jetstream::kv::Operation::Put) else {
            continue;
        };
        if let Ok(value) = serde_json::from_slice::<LeaseValue>(&entry.value) {
            let written = entry.created.unix_timestamp_nanos() / 1000;
            found.insert(partition, (value, entry.revision, written as i64));
        }
    }
    Ok(found)
}

/// Holds this node's partitions until aborted, on `health`: see the module doc. On return (stop), releases
/// them all.
pub async fn run(
    kv: async_nats::jetstream::kv::Store,
    members: Members,
    partitions: Partitions,
    options: OwnershipOptions,
    health: weft_events::Health,
) {
    let me = members.me().id.clone();
    let seen: Seen = Arc::default();
    let _watching = AbortOnDrop(tokio::spawn(watch_holders(kv.clone(), seen.clone())));
    let mut last_renewal = Instant::now();
    let mut live: Vec<String> = vec![me.clone()];
    loop {
        // Every request of a round is bounded by the renewal period, so that a slow server (one of a cluster
        // gone) cannot hold back the renewals until the leases lapse.
        let bound = options.renew_every;
        match tokio::time::timeout(bound, members.live()).await.unwrap_or_else(|_| Err(timed_out())) {
            Ok(members) => {
                live = members.into_iter().map(|m| m.id).collect();
                if !live.contains(&me) {
                    // Our own entry aged out (we were cut off): the others will take our partitions.
                    live.push(me.clone());
                }
                health.running();
            }
            Err(error) => health.retrying(format!("reading the membership: {error}")),
        }
        let ids: Vec<&str> = live.iter().map(String::as_str).collect();
        let held = partitions.held();
        // The holders as the bucket says (entries unwritten for longer than the TTL are gone), and as this node
        // knows for itself.
        let mut holders: BTreeMap<u32, String> = seen
            .lock()
            .expect("seen lock")
            .iter()
            .filter(|(_, (node, at))| at.elapsed() < options.ttl && *node != me)
            .map(|(p, (node, _))| (*p, node.clone()))
            .collect();
        holders.extend(held.keys().map(|p| (*p, me.clone())));
        let wanted: BTreeSet<u32> = super::balanced(partitions.count(), &ids, &holders)
            .into_iter()
            .filter(|(_, owner)| *owner == me.as_str())
            .map(|(p, _)| p)
            .collect();
        if last_renewal.elapsed() >= options.renew_every {
            last_renewal = Instant::now();
            let renewals = held
                .iter()
                .filter(|(p, _)| wanted.contains(p))
                .map(|(partition, lease)| renew(&kv, &partitions, &me, *partition, lease, &options));
            futures::future::join_all(renewals).await;
        }
        let handovers = held
            .iter()
            .filter(|(p, _)| !wanted.contains(p))
            .map(|(partition, lease)| hand_over(&kv, &partitions, *partition, lease, &options));
        futures::future::join_all(handovers).await;
        let held = partitions.held();
        let takes = wanted
            .iter()
            .filter(|p| !held.contains_key(p))
            .map(|partition| take(&kv, &partitions, &me, *partition, &options));
        futures::future::join_all(takes).await;
        // Drop what could not be renewed in time, and tell the router.
        for (partition, lease) in partitions.held() {
            if Instant::now() >= lease.valid_until {
                tracing::warn!(partition, "a partition's lease lapsed unrenewed; no longer serving it");
                partitions.remove(partition);
            }
        }
        partitions.set_serving();
        partitions.inner.rounds.send_modify(|n| *n += 1);
        tokio::time::sleep(options.tick).await;
    }
}

/// Each partition's holder as this node last saw its key written, and when it saw it.
type Seen = Arc<std::sync::Mutex<BTreeMap<u32, (String, Instant)>>>;

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Follows every write of the leases' bucket into `seen`, watching again after a failure. The server drops an
/// entry that ages out without telling watchers: that is why `seen` keeps when each was written.
async fn watch_holders(kv: async_nats::jetstream::kv::Store, seen: Seen) {
    use async_nats::jetstream::kv::Operation;
    loop {
        match kv.watch_all().await {
            Ok(mut watch) => {
                while let Some(entry) = futures::StreamExt::next(&mut watch).await {
                    let Ok(entry) = entry else { break };
                    let Ok(partition) = entry.key.parse::<u32>() else { continue };
                    let mut seen = seen.lock().expect("seen lock");
                    match entry.operation {
                        Operation::Put => match serde_json::from_slice::<LeaseValue>(&entry.value) {
                            Ok(lease) => {
                                seen.insert(partition, (lease.node, Instant::now()));
                            }
                            Err(_) => {
                                seen.remove(&partition);
                            }
                        },
                        Operation::Delete | Operation::Purge => {
                            seen.remove(&partition);
                        }
                    }
                }
            }
            Err(error) => tracing::debug!(%error, "watching the partition leases"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn timed_out() -> super::members::Error {
    super::members::Error::Read("no answer within the renewal period".into())
}

fn delete_timed_out() -> async_nats::jetstream::kv::DeleteError {
    async_nats::jetstream::kv::DeleteError::new(async_nats::jetstream::kv::DeleteErrorKind::TimedOut)
}

fn value(me: &str, since: i64) -> Bytes {
    Bytes::from(serde_json::to_vec(&LeaseValue { node: me.to_owned(), since }).unwrap_or_default())
}

async fn take(
    kv: &async_nats::jetstream::kv::Store,
    partitions: &Partitions,
    me: &str,
    partition: u32,
    options: &OwnershipOptions,
) {
    let sent = Instant::now();
    let since = weft_events::Timestamp::now().0;
    let created = tokio::time::timeout(options.renew_every, kv.create(partition.to_string(), value(me, since))).await;
    if let Ok(Ok(revision)) = created {
        tracing::info!(partition, token = revision, "took a partition");
        let valid_until = sent + options.ttl.saturating_sub(options.renew_every);
        partitions.insert(partition, Held { token: revision, revision, valid_until, since });
    }
}

async fn renew(
    kv: &async_nats::jetstream::kv::Store,
    partitions: &Partitions,
    me: &str,
    partition: u32,
    lease: &Held,
    options: &OwnershipOptions,
) {
    use async_nats::jetstream::kv::UpdateErrorKind;
    let sent = Instant::now();
    let update = kv.update(partition.to_string(), value(me, lease.since), lease.revision);
    let Ok(updated) = tokio::time::timeout(options.renew_every, update).await else {
        tracing::warn!(partition, "renewing a partition's lease timed out");
        return;
    };
    match updated {
        Ok(revision) => {
            let valid_until = sent + options.ttl.saturating_sub(options.renew_every);
            partitions.insert(partition, Held { revision, valid_until, ..*lease });
        }
        Err(error) if error.kind() == UpdateErrorKind::WrongLastRevision => {
            tracing::warn!(partition, "another node took a partition this node held; no longer serving it");
            partitions.remove(partition);
        }
        Err(error) => tracing::warn!(partition, %error, "renewing a partition's lease"),
    }
}

/// Stops serving `partition`, waits for its commands in flight, and deletes its key so that its new owner
/// takes it at once.
async fn hand_over(
    kv: &async_nats::jetstream::kv::Store,
    partitions: &Partitions,
    partition: u32,
    lease: &Held,
    options: &OwnershipOptions,
) {
    partitions.stop_serving(partition);
    let deadline = Instant::now() + options.drain_timeout;
    while !partitions.drained(partition) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    partitions.remove(partition);
    let delete = kv.delete_expect_revision(partition.to_string(), Some(lease.revision));
    match tokio::time::timeout(options.drain_timeout, delete).await.unwrap_or_else(|_| Err(delete_timed_out())) {
        Ok(()) => tracing::info!(partition, "handed a partition over"),
        // Its new owner takes it when the key ages out.
        Err(error) => tracing::warn!(partition, %error, "releasing a partition's lease"),
    }
}

/// Releases every partition held (a node stopping): its new owners take them at once.
pub async fn release_all(kv: &async_nats::jetstream::kv::Store, partitions: &Partitions, options: &OwnershipOptions) {
    for (partition, lease) in partitions.held() {
        hand_over(kv, partitions, partition, &lease, options).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_of_partitioned_aggregates_have_the_partition_of_their_commands() {
        let id = "01a25123-8aa5-7932-86f8-91071cdcef9a";
        assert_eq!(partition_of_stream(&format!("job-{id}"), 64), Some(super::super::partition("job", id, 64)));
        assert_eq!(partition_of_stream("user-ann", 64), None);
        assert_eq!(partition_of_stream("checkpoint", 64), None);
    }

    #[test]
    fn a_node_holding_nothing_refuses_partitioned_appends_and_lets_others_through() {
        let partitions = Partitions::new(64);
        let job = StreamName::new(format!("job-{}", uuid::Uuid::now_v7())).unwrap();
        assert!(matches!(partitions.fence(&job), Err(Fenced::NotHeld(_))));
        assert_eq!(partitions.fence(&StreamName::new("user-ann").unwrap()), Ok(None));
        let p = partition_of_stream(job.as_str(), 64).unwrap();
        let now = Instant::now();
        let held = Held { token: 7, revision: 9, valid_until: now + Duration::from_secs(5), since: 0 };
        partitions.insert(p, held);
        assert_eq!(partitions.fence(&job), Ok(Some(Fence { partition: p, token: 7 })));
        partitions.insert(p, Held { valid_until: now, ..held });
        assert_eq!(partitions.fence(&job), Err(Fenced::Lapsed(p)));
    }
}
