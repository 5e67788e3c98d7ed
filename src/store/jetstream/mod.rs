//! The JetStream backend: the event store of nodes that share one NATS cluster.
//!
//! # Layout
//!
//! - **Events**: one stream (`WEFT_EVENTS` unless configured) with file storage, the configured replicas,
//!   atomic batches and direct gets allowed, no limits (a limit would delete events and leave gaps), deletes
//!   and purges denied. Each event is one message on `<prefix>.<partition>.<stream>.<version>`
//!   (`weft.store.17.job-0192....7`) whose body is the shared record format ([`crate::store::record`]); its
//!   **position is the message's stream sequence**, so positions are dense because nothing else is stored in
//!   that stream and nothing is deleted. `<partition>` is the stream's [partition](weft_events::partition)
//!   (`_` for a stream of none) among the number the stream was created with, recorded in its metadata
//!   (`weft_partitions`); a reader of one partition ([`EventRead::subscribe_partition`]) then reads only its
//!   messages (`<prefix>.17.>`). A stream created before partitions (no such metadata) keeps its subjects
//!   `<prefix>.<stream>.<version>`, and its partitions are read by filtering the whole log.
//! - **Snapshots** and **checkpoints**: two KV buckets (`weft_snapshots`, `weft_checkpoints`), one key per
//!   stream or checkpoint name, the value MessagePack; updates are compare-and-set on the key's revision, so
//!   "newer wins" holds between nodes.
//!
//! # Appends
//!
//! An append publishes its events on the subjects of their versions, the first with
//! `Nats-Expected-Last-Subject-Sequence: 0`: the server stores it only if no event holds the version after the
//! one this append was decided against (which the store has seen exist, and versions are dense and never
//! deleted), which is optimistic concurrency done by the server, across every node, answered from the
//! server's index of subjects in constant time. Several events go as one atomic batch
//! (`Nats-Batch-Id`, `-Sequence`, `-Commit`; server 2.12+): all or nothing. Each message carries its event
//! id as `Nats-Msg-Id`, so a publish retried after a lost acknowledgement is recognised as a duplicate
//! instead of stored twice; and when a retried append meets a conflict, the store looks whether the event
//! after the expected version is its own before calling it a conflict.
//!
//! # Reads
//!
//! NATS 2.15 serves direct gets from any replica and, despite ADR-55, does not take `min_last_seq` (it
//! refuses the field in a message get): a replica's answer can be behind, and a replica was seen here to
//! answer a wildcard last-by-subject get from seconds behind. So the store reads in two ways:
//!
//! - single messages (a stream's last event, the event at a version, a bucket's entry) with the leader's
//!   message get (`$JS.API.STREAM.MSG.GET`), which answers from what the leader has applied, and every
//!   acknowledged append has been applied there;
//! - pages with a batch direct get, served by any replica, and checked: positions are dense and the store
//!   knows the furthest position it has seen acknowledged, read or announced, and the last version of each
//!   stream it has touched, so a page that stops short of those is stale and is asked for again.
//!
//! A node can still read another node's latest append a moment late; the expected-sequence check makes an
//! append decided on such a read fail as a conflict, and the conflict reads the stream's end from the leader.
//!
//! Subscriptions are woken by an ordered push consumer that delivers only headers: each message's sequence
//! is the head of the log as that server knows it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weft_events::{
    Checkpoint, Direction, Envelope, Error, EventRead, Limits, Partition, Snapshot, StreamName, Subscription,
};

use crate::store::record;

mod append;
mod group;
mod kv;
mod read;
mod setup;
#[cfg(test)]
mod tests;
mod wire;

use setup::{
    Heads, check_names, ensure_bucket, ensure_events_stream, follow_head, raise, request_info, version_at_least,
};
pub(crate) use setup::{follow, subjects};
use wire::InfoReply;

/// The partition token of the subjects of a stream in no partition.
const NO_PARTITION: &str = "_";

/// The oldest server with atomic batches and read-after-write direct gets.
pub const MIN_SERVER_VERSION: (u32, u32) = (2, 12);

/// Room left in a message for its subject, headers and the record's own fields when the payload limit is
/// derived from the server's `max_payload`.
const MESSAGE_OVERHEAD_BYTES: usize = 8 * 1024;

/// How often an `Any` append re-reads and tries again when other writers keep moving its stream.
const MAX_ANY_ATTEMPTS: usize = 100;

/// How many compare-and-set rounds a snapshot or checkpoint save takes before giving up.
const MAX_CAS_ATTEMPTS: usize = 50;

/// Most streams whose last (version, sequence) this store remembers, to skip a lookup before an append.
const MAX_REMEMBERED_TAILS: usize = 100_000;

/// Where the JetStream store keeps things, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetStreamConfig {
    /// The JetStream stream that holds the events.
    pub stream: String,
    /// The first tokens of every event's subject: `<prefix>.<partition>.<stream>.<version>`.
    pub subject_prefix: String,
    /// Partitions of the events stream when this store creates it (default 64); an existing stream keeps its
    /// own.
    pub partitions: u32,
    /// Replicas of the events stream and the buckets: 1, or 3 (or 5) in a cluster.
    pub replicas: usize,
    /// The KV bucket of snapshots.
    pub snapshots_bucket: String,
    /// The KV bucket of checkpoints.
    pub checkpoints_bucket: String,
    /// How long one request to the server may take.
    pub timeout: Duration,
    /// The limits; the largest payload is lowered to fit the server's `max_payload`.
    pub limits: Limits,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        Self {
            stream: "WEFT_EVENTS".into(),
            subject_prefix: "weft.store".into(),
            partitions: weft_events::partition::DEFAULT_PARTITIONS,
            replicas: 1,
            snapshots_bucket: "weft_snapshots".into(),
            checkpoints_bucket: "weft_checkpoints".into(),
            timeout: Duration::from_secs(5),
            limits: Limits::default(),
        }
    }
}

/// Why the store could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The server is older than atomic batches.
    #[error(
        "NATS server {version} is too old for the JetStream store: it needs {}.{} or later (atomic batches, \
         read-after-write)",
        MIN_SERVER_VERSION.0, MIN_SERVER_VERSION.1
    )]
    ServerTooOld {
        /// The version the server reported.
        version: String,
    },
    /// A stream or bucket exists with settings the store cannot work with.
    #[error("JetStream stream {stream} is misconfigured: {}", problems.join("; "))]
    Misconfigured {
        /// The stream (a bucket's stream is `KV_<bucket>`).
        stream: String,
        /// Each setting that is wrong, and what it must be.
        problems: Vec<String>,
    },
    /// A name in the configuration cannot be used.
    #[error("invalid JetStream store configuration: {0}")]
    InvalidConfig(String),
    /// The server did not answer or refused a request.
    #[error("JetStream is unavailable: {0}")]
    Unavailable(String),
}

/// The JetStream event store. Cloning is cheap and shares one connection and one head watch.
#[derive(Clone)]
pub struct JetStreamStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    config: JetStreamConfig,
    limits: Limits,
    /// Largest message the server takes, for snapshots and checkpoints.
    max_message_bytes: usize,
    events: Log,
    snapshots: Log,
    checkpoints: Log,
    /// The last (version, sequence) of streams this store has appended to or read the end of.
    tails: Mutex<HashMap<StreamName, (u64, u64)>>,
    /// Partitions of the events stream, as its metadata says; `None` for a stream of the first layout.
    partitions: Option<u32>,
    heads: Arc<Heads>,
    /// Follows the head for subscriptions; started by the first one, so that a node that only appends does
    /// not make the server deliver every event to it.
    follower: std::sync::OnceLock<JoinHandle<()>>,
    /// The queue of the group commit task ([`group`]), started by the first append.
    group: std::sync::OnceLock<tokio::sync::mpsc::Sender<group::Publish>>,
    /// With partition routing, the partitions this node holds: an append to a partitioned stream is refused
    /// unless its partition is held, and carries its fencing token.
    fence: std::sync::OnceLock<crate::cluster::ownership::Partitions>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(follower) = self.follower.get() {
            follower.abort();
        }
    }
}

/// One JetStream stream the store reads, and the highest sequence seen in it.
struct Log {
    name: String,
    seen: AtomicU64,
}

impl Log {
    fn new(name: String) -> Self {
        Self { name, seen: AtomicU64::new(0) }
    }

    fn saw(&self, sequence: u64) {
        self.seen.fetch_max(sequence, Ordering::Relaxed);
    }

    fn seen(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }

    /// The bucket's name, for the stream `KV_<bucket>` of a KV bucket.
    fn bucket(&self) -> &str {
        self.name.strip_prefix("KV_").unwrap_or(&self.name)
    }
}

impl JetStreamStore {
    /// Opens the store on `client`: checks the server's version, creates the stream and the buckets or checks
    /// the existing ones, and starts following the log's head.
    pub async fn open(client: async_nats::Client, config: JetStreamConfig) -> Result<Self, OpenError> {
        check_names(&config)?;
        let info = client.server_info();
        if !version_at_least(&info.version, MIN_SERVER_VERSION) {
            return Err(OpenError::ServerTooOld { version: info.version });
        }
        let max_message_bytes = info.max_payload.saturating_sub(MESSAGE_OVERHEAD_BYTES);
        let mut limits = config.limits;
        limits.max_payload_bytes = limits.max_payload_bytes.min(max_message_bytes);

        let js = async_nats::jetstream::new(client.clone());
        let (head, partitions) = ensure_events_stream(&client, &js, &config).await?;
        for bucket in [&config.snapshots_bucket, &config.checkpoints_bucket] {
            ensure_bucket(&client, &js, bucket, &config).await?;
        }

        let events = Log::new(config.stream.clone());
        events.saw(head);
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                limits,
                max_message_bytes,
                events,
                snapshots: Log::new(format!("KV_{}", config.snapshots_bucket)),
                checkpoints: Log::new(format!("KV_{}", config.checkpoints_bucket)),
                tails: Mutex::new(HashMap::new()),
                partitions,
                heads: Arc::new(Heads::new(head, partitions)),
                follower: std::sync::OnceLock::new(),
                group: std::sync::OnceLock::new(),
                fence: std::sync::OnceLock::new(),
                config,
            }),
        })
    }

    /// The NATS connection it works on.
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// Fences its appends by `partitions` from now on (a node routing commands by partition): an append to a
    /// stream of a partition this node does not hold, or no longer trusts its lease on, is refused as
    /// unavailable, and every other append to a partitioned stream carries the partition's fencing token in
    /// its messages' `Weft-Fence` header. Once per store.
    pub fn fence_by(&self, partitions: crate::cluster::ownership::Partitions) {
        let _ = self.inner.fence.set(partitions);
    }

    /// Notes that an append to `stream` was acknowledged at `sequence`: the log's head and its partition's
    /// move there, waking this node's readers without waiting for the follower.
    fn saw_in(&self, stream: &StreamName, sequence: u64) {
        self.saw(sequence);
        if let Some(count) = self.inner.partitions
            && let Some(partition) = weft_events::partition::of_stream(stream.as_str(), count)
            && let Some(head) = self.inner.heads.partitions.get(partition as usize)
        {
            raise(head, sequence);
        }
    }

    /// Starts following the log's head, once.
    fn follow(&self) {
        self.inner.follower.get_or_init(|| {
            let js = async_nats::jetstream::new(self.inner.client.clone());
            tokio::spawn(follow_head(js, self.inner.config.clone(), self.inner.heads.clone()))
        });
    }

    /// The head of `partition` when the stream files its events by partitions of that count.
    fn filed_by(&self, partition: Partition) -> Option<&watch::Sender<u64>> {
        (self.inner.partitions == Some(partition.count))
            .then(|| self.inner.heads.partitions.get(partition.index as usize))?
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &JetStreamConfig {
        &self.inner.config
    }

    /// The number of partitions its events are filed under; `None` for a stream created before partitions.
    pub fn partitions(&self) -> Option<u32> {
        self.inner.partitions
    }

    /// `<prefix>.<partition>.` (`<prefix>.` in the first layout): what the subjects of `stream` begin with.
    fn subject_base(&self, stream: &StreamName) -> String {
        let prefix = &self.inner.config.subject_prefix;
        match self.inner.partitions {
            None => format!("{prefix}."),
            Some(count) => match weft_events::partition::of_stream(stream.as_str(), count) {
                Some(partition) => format!("{prefix}.{partition}."),
                None => format!("{prefix}.{NO_PARTITION}."),
            },
        }
    }

    fn subject(&self, stream: &StreamName, version: u64) -> String {
        format!("{}{}.{version}", self.subject_base(stream), stream.as_str())
    }

    /// Fewest messages worth one atomic batch rather than a message each ([`group`]'s floor): a single-server
    /// stream stages each batch on disk ([`group::BATCH_FROM`]); a replicated one stages it in memory, so any
    /// two go together.
    fn batch_from(&self) -> usize {
        if self.inner.config.replicas == 1 { group::BATCH_FROM } else { 2 }
    }

    fn stream_filter(&self, stream: &StreamName) -> String {
        format!("{}{}.*", self.subject_base(stream), stream.as_str())
    }

    fn unavailable(&self, reason: impl std::fmt::Display) -> Error {
        Error::Unavailable {
            location: format!("JetStream stream {}", self.inner.config.stream),
            reason: reason.to_string(),
        }
    }

    fn remember_tail(&self, stream: &StreamName, version: u64, sequence: u64) {
        let mut tails = self.inner.tails.lock().expect("tails lock");
        if tails.len() >= MAX_REMEMBERED_TAILS && !tails.contains_key(stream) {
            tails.clear();
        }
        let tail = tails.entry(stream.clone()).or_insert((version, sequence));
        if sequence >= tail.1 {
            *tail = (version, sequence);
        }
    }

    fn remembered_tail(&self, stream: &StreamName) -> Option<(u64, u64)> {
        self.inner.tails.lock().expect("tails lock").get(stream).copied()
    }

    async fn info(&self, stream: &str) -> Result<InfoReply, Error> {
        request_info(&self.inner.client, stream, self.inner.config.timeout).await.map_err(|e| self.unavailable(e))
    }

    /// The sequence a fresh read of `log` must have seen: its last sequence as the leader knows it.
    async fn leader_last_sequence(&self, log: &Log) -> Result<u64, Error> {
        let info = self.info(&log.name).await?;
        if let Some(error) = info.error {
            return Err(self.unavailable(format!("stream info of {}: {}", log.name, error.description)));
        }
        Ok(info.state.map_or(0, |s| s.last_seq))
    }
}

fn header_u64(message: &async_nats::Message, name: &str) -> Option<u64> {
    message.headers.as_ref()?.get(name)?.as_str().parse().ok()
}

#[async_trait]
impl EventRead for JetStreamStore {
    async fn read_stream(
        &self,
        stream: &StreamName,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<Envelope>, Error> {
        self.inner.limits.check_page(limit)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (first, count) = match direction {
            Direction::Forwards => (from.max(1), limit),
            Direction::Backwards => {
                let top = from.min(self.tail(stream).await?.0);
                if top == 0 {
                    return Ok(Vec::new());
                }
                let first = top.saturating_sub(limit as u64 - 1).max(1);
                (first, (top - first + 1) as usize)
            }
        };
        // Everything up to the last version of the stream this store knows of must come back.
        let known = self.remembered_tail(stream).map_or(0, |(version, _)| version);
        let want = if known >= first { count.min((known - first + 1) as usize) } else { 0 };
        let mut events = self.complete(want, || self.page_of(stream, first, count)).await?;
        if let Some(last) = events.last() {
            self.remember_tail(stream, last.version, last.position);
        }
        if direction == Direction::Backwards {
            events.reverse();
        }
        Ok(events)
    }

    async fn read_all(&self, from: u64, limit: usize) -> Result<Vec<Envelope>, Error> {
        self.inner.limits.check_page(limit)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let from = from.max(1);
        // Positions are dense, so everything up to the furthest sequence this store knows of must come back.
        let known = self.inner.events.seen().max(*self.inner.heads.all.borrow());
        let want = if known >= from { limit.min((known - from + 1) as usize) } else { 0 };
        let messages = self.complete(want, || self.get_batch(from, None, limit)).await?;
        let mut names = record::Names::default();
        let mut events = Vec::new();
        for message in messages {
            let event = self.decode(&mut names, &message)?;
            let expected = from + events.len() as u64;
            if event.position != expected {
                return Err(Error::Corrupt {
                    location: format!("JetStream stream {}", self.inner.config.stream),
                    detail: format!("position {expected} is missing (was a message deleted?)"),
                });
            }
            events.push(event);
        }
        Ok(events)
    }

    async fn stream_version(&self, stream: &StreamName) -> Result<u64, Error> {
        Ok(self.tail(stream).await?.0)
    }

    async fn head(&self) -> Result<u64, Error> {
        let last = self.leader_last_sequence(&self.inner.events).await?;
        self.saw(last);
        Ok(last)
    }

    async fn load_snapshot(&self, stream: &StreamName) -> Result<Option<Snapshot>, Error> {
        let found: Option<(u64, Snapshot)> = self.kv_get(&self.inner.snapshots, stream.as_str()).await?;
        Ok(found.map(|(_, s)| s).filter(|s| s.stream == *stream))
    }

    async fn load_checkpoint(&self, name: &StreamName) -> Result<Option<Checkpoint>, Error> {
        let found: Option<(u64, Checkpoint)> = self.kv_get(&self.inner.checkpoints, name.as_str()).await?;
        Ok(found.map(|(_, c)| c).filter(|c| c.name == *name))
    }

    async fn checkpoint_names(&self) -> Result<Vec<StreamName>, Error> {
        self.kv_keys(&self.inner.checkpoints).await
    }

    fn subscribe_all(&self, from: u64) -> Subscription {
        self.follow();
        Subscription::new(Arc::new(self.clone()), self.inner.heads.all.subscribe(), from)
    }

    async fn read_partition(
        &self,
        partition: Partition,
        from: u64,
        limit: usize,
    ) -> Result<(Vec<Envelope>, u64), Error> {
        self.inner.limits.check_page(limit)?;
        let from = from.max(1);
        let Some(head) = self.filed_by(partition) else {
            // Not filed by these partitions: the whole log, filtered.
            return Ok(weft_events::store::of_partition(self.read_all(from, limit).await?, partition, from));
        };
        if limit == 0 {
            return Ok((Vec::new(), from - 1));
        }
        // Everything of the partition up to the furthest sequence known of it must come back: at least one.
        let want = usize::from(*head.borrow() >= from);
        let filter = format!("{}.{}.>", self.inner.config.subject_prefix, partition.index);
        let messages = self.complete(want, || self.get_batch(from, Some(&filter), limit)).await?;
        let mut names = record::Names::default();
        let events = messages.iter().map(|m| self.decode(&mut names, m)).collect::<Result<Vec<_>, _>>()?;
        let through = events.last().map_or(from - 1, |e| e.position);
        Ok((events, through))
    }

    fn subscribe_partition(&self, partition: Partition, from: u64) -> Subscription {
        self.follow();
        match self.filed_by(partition) {
            Some(head) => Subscription::new(Arc::new(self.clone()), head.subscribe(), from).only(partition),
            None => self.subscribe_all(from).only(partition),
        }
    }

    fn limits(&self) -> Limits {
        self.inner.limits
    }
}
