//! The JetStream backend: the event store of nodes that share one NATS cluster.
//!
//! # Layout
//!
//! - **Events**: one stream (`WEFT_EVENTS` unless configured) with file storage, the configured replicas,
//!   atomic batches and direct gets allowed, no limits (a limit would delete events and leave gaps), deletes
//!   and purges denied. Each event is one message on `<prefix>.<stream>.<version>` (`weft.store.job-0192...
//!   .7`) whose body is the shared record format ([`crate::store::record`]); its **position is the message's
//!   stream sequence**, so positions are dense because nothing else is stored in that stream and nothing is
//!   deleted.
//! - **Snapshots** and **checkpoints**: two KV buckets (`weft_snapshots`, `weft_checkpoints`), one key per
//!   stream or checkpoint name, the value MessagePack; updates are compare-and-set on the key's revision, so
//!   "newer wins" holds between nodes.
//!
//! # Appends
//!
//! An append publishes its events with `Nats-Expected-Last-Subject-Sequence` set to the sequence of the
//! stream's last event and `Nats-Expected-Last-Subject-Sequence-Subject: <prefix>.<stream>.*`: the server
//! stores it only if no event of that stream came after the one this append was decided against, which is
//! optimistic concurrency done by the server, across every node. Several events go as one atomic batch
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

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{DeliverPolicy, push};
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;
use weft_events::{
    Appended, Checkpoint, Direction, Envelope, Error, EventRead, EventWrite, ExpectedVersion, Limits, NewEvent,
    Snapshot, StreamName, Subscription, Timestamp, codec,
};

use crate::store::record;

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
    /// The first tokens of every event's subject: `<prefix>.<stream>.<version>`.
    pub subject_prefix: String,
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
    head: Arc<watch::Sender<u64>>,
    /// Follows the head for subscriptions; started by the first one, so that a node that only appends does
    /// not make the server deliver every event to it.
    follower: std::sync::OnceLock<JoinHandle<()>>,
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

/// A direct get request (`JSApiMsgGetRequest`).
#[derive(Debug, Default, Serialize)]
struct GetRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_by_subj: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_by_subj: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    batch: Option<usize>,
}

/// A JetStream API error.
#[derive(Debug, Deserialize)]
struct ApiError {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    err_code: u32,
    #[serde(default)]
    description: String,
}

/// The answer to a publish: an acknowledgement or an error.
#[derive(Debug, Deserialize)]
struct PubReply {
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    count: Option<u64>,
    #[serde(default)]
    error: Option<ApiError>,
}

/// The answer to a message get.
#[derive(Debug, Deserialize)]
struct MsgGetReply {
    #[serde(default)]
    message: Option<StoredMessage>,
    #[serde(default)]
    error: Option<ApiError>,
}

#[derive(Debug, Deserialize)]
struct StoredMessage {
    subject: String,
    seq: u64,
    /// The body, base64.
    #[serde(default)]
    data: String,
}

/// The answer to a stream info request.
#[derive(Debug, Deserialize)]
struct InfoReply {
    #[serde(default)]
    config: Option<stream::Config>,
    #[serde(default)]
    state: Option<InfoState>,
    #[serde(default)]
    error: Option<ApiError>,
}

#[derive(Debug, Deserialize)]
struct InfoState {
    #[serde(default)]
    last_seq: u64,
}

/// JetStream's codes for a failed expected-sequence check: with the actual sequence in the description
/// (`wrong last sequence: 5`), and without it (a clustered stream can answer either).
const WRONG_LAST_SEQUENCE: [u32; 2] = [10071, 10164];
/// JetStream's code for "stream not found".
const STREAM_NOT_FOUND: u32 = 10059;

/// Why a publish failed.
enum PublishError {
    /// The expected-sequence check failed: another event of the stream came first.
    WrongLastSequence,
    /// No acknowledgement came: the publish may or may not have been stored.
    Ambiguous(String),
    /// Nothing answered: the stream has no leader now (being created, or electing one); nothing was stored.
    NoLeader,
    /// The server refused it for another reason; nothing was stored.
    Refused(String),
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
        let head = ensure_events_stream(&client, &js, &config).await?;
        for bucket in [&config.snapshots_bucket, &config.checkpoints_bucket] {
            ensure_bucket(&client, &js, bucket, &config).await?;
        }

        let events = Log::new(config.stream.clone());
        events.saw(head);
        let (head_tx, _) = watch::channel(head);
        let head_tx = Arc::new(head_tx);
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                limits,
                max_message_bytes,
                events,
                snapshots: Log::new(format!("KV_{}", config.snapshots_bucket)),
                checkpoints: Log::new(format!("KV_{}", config.checkpoints_bucket)),
                tails: Mutex::new(HashMap::new()),
                head: head_tx,
                follower: std::sync::OnceLock::new(),
                config,
            }),
        })
    }

    /// The NATS connection it works on.
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &JetStreamConfig {
        &self.inner.config
    }

    fn subject(&self, stream: &StreamName, version: u64) -> String {
        format!("{}.{}.{version}", self.inner.config.subject_prefix, stream.as_str())
    }

    fn stream_filter(&self, stream: &StreamName) -> String {
        format!("{}.{}.*", self.inner.config.subject_prefix, stream.as_str())
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

    /// Up to `count` events of `stream` from version `first` on, from the events stream's replicas.
    async fn page_of(&self, stream: &StreamName, first: u64, count: usize) -> Result<Vec<Envelope>, Error> {
        // Where version `first` is: from the leader; a stream shorter than that reads as empty.
        let Some(head) = self.event_at(stream, first).await? else { return Ok(Vec::new()) };
        let mut events = vec![head];
        if count > 1 {
            let mut names = record::Names::default();
            let filter = self.stream_filter(stream);
            for message in self.get_batch(events[0].position + 1, &filter, count - 1).await? {
                let event = self.decode(&mut names, &message)?;
                let expected = events.last().expect("one event").version + 1;
                if event.stream != *stream || event.version != expected {
                    return Err(self.corrupt(format!(
                        "stream {stream} jumps from version {} to {}",
                        expected - 1,
                        event.version
                    )));
                }
                events.push(event);
            }
        }
        Ok(events)
    }

    /// Runs `read` until it returns at least `want` items: a page read from a replica that is behind comes
    /// back short and is asked for again (the queue group picks another replica, or this one catches up).
    async fn complete<T, F, Fut>(&self, want: usize, mut read: F) -> Result<Vec<T>, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Vec<T>, Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.inner.config.timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            let page = read().await?;
            if page.len() >= want {
                return Ok(page);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self
                    .unavailable(format!("the replicas answered {} of {want} events known to be stored", page.len())));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Notes a sequence acknowledged or read in the events stream.
    fn saw(&self, sequence: u64) {
        self.inner.events.saw(sequence);
        self.inner.head.send_if_modified(|head| {
            let moved = sequence > *head;
            *head = (*head).max(sequence);
            moved
        });
    }

    /// One message, from the stream's leader; `None` when there is none.
    async fn leader_get(&self, log: &Log, get: GetRequest<'_>) -> Result<Option<(String, u64, Bytes)>, Error> {
        let body = serde_json::to_vec(&get).expect("a get request serialises");
        let subject = format!("$JS.API.STREAM.MSG.GET.{}", log.name);
        let reply = request(&self.inner.client, subject, None, body.into(), self.inner.config.timeout)
            .await
            .map_err(|e| self.unavailable(format!("message get from {}: {e}", log.name)))?;
        let reply: MsgGetReply = serde_json::from_slice(&reply.payload)
            .map_err(|e| self.unavailable(format!("unreadable message get reply from {}: {e}", log.name)))?;
        let message = match (reply.message, reply.error) {
            (Some(message), _) => message,
            (None, Some(error)) if error.code == 404 => return Ok(None),
            (None, error) => {
                let reason = error.map_or_else(|| "an empty reply".to_owned(), |e| e.description);
                return Err(self.unavailable(format!("message get from {}: {reason}", log.name)));
            }
        };
        use base64::Engine as _;
        let data =
            base64::engine::general_purpose::STANDARD.decode(message.data.as_bytes()).map_err(|e| Error::Corrupt {
                location: format!("JetStream stream {}", log.name),
                detail: format!("message {}: {e}", message.seq),
            })?;
        log.saw(message.seq);
        Ok(Some((message.subject, message.seq, Bytes::from(data))))
    }

    /// Up to `limit` messages of the events stream from sequence `from` on whose subjects match `filter`.
    async fn get_batch(&self, from: u64, filter: &str, limit: usize) -> Result<Vec<async_nats::Message>, Error> {
        let log = &self.inner.events;
        let request =
            GetRequest { seq: Some(from), next_by_subj: Some(filter), batch: Some(limit), ..Default::default() };
        let body = serde_json::to_vec(&request).expect("a get request serialises");
        let client = &self.inner.client;
        let inbox = client.new_inbox();
        let mut replies = client.subscribe(inbox.clone()).await.map_err(|e| self.unavailable(e))?;
        client
            .publish_with_reply(format!("$JS.API.DIRECT.GET.{}", log.name), inbox, body.into())
            .await
            .map_err(|e| self.unavailable(e))?;
        let mut messages = Vec::new();
        loop {
            let reply = tokio::time::timeout(self.inner.config.timeout, replies.next())
                .await
                .map_err(|_| self.unavailable("a batch read timed out"))?
                .ok_or_else(|| self.unavailable("the connection closed during a batch read"))?;
            match reply.status.map(|s| s.as_u16()) {
                None | Some(200) => {
                    messages.push(reply);
                    if messages.len() >= limit {
                        break;
                    }
                }
                // End of batch, or nothing at all from `from` on; or no replica answers yet (503), which reads
                // as empty and is asked again by `complete` when more is known to be stored.
                Some(204 | 404 | 503) => break,
                Some(code) => {
                    return Err(self.unavailable(format!(
                        "batch read answered {code} {}",
                        reply.description.as_deref().unwrap_or("")
                    )));
                }
            }
        }
        let _ = replies.unsubscribe().await;
        if let Some(last) = messages.last().and_then(|m| header_u64(m, "Nats-Sequence")) {
            self.saw(last);
        }
        Ok(messages)
    }

    /// Decodes a message of the events stream read by a direct get.
    fn decode(&self, names: &mut record::Names, message: &async_nats::Message) -> Result<Envelope, Error> {
        let sequence = header_u64(message, "Nats-Sequence")
            .ok_or_else(|| self.corrupt("a direct get reply without Nats-Sequence".into()))?;
        let subject = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Subject"))
            .ok_or_else(|| self.corrupt(format!("message {sequence} came without its subject")))?;
        self.decode_parts(names, subject.as_str(), sequence, &message.payload)
    }

    /// Decodes the message at `sequence` on `subject` with body `body`.
    fn decode_parts(
        &self,
        names: &mut record::Names,
        subject: &str,
        sequence: u64,
        body: &[u8],
    ) -> Result<Envelope, Error> {
        let (stream, version) = self.parse_subject(subject, sequence)?;
        let mut envelope = record::decode(names, 0, stream.as_bytes(), version, body)
            .map_err(|detail| self.corrupt(format!("message {sequence} ({subject}) {detail}")))?;
        envelope.position = sequence;
        Ok(envelope)
    }

    /// The stream name and version an event's subject holds.
    fn parse_subject<'s>(&self, subject: &'s str, sequence: u64) -> Result<(&'s str, u64), Error> {
        subject
            .strip_prefix(self.inner.config.subject_prefix.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|rest| rest.rsplit_once('.'))
            .and_then(|(stream, version)| Some((stream, version.parse::<u64>().ok()?)))
            .ok_or_else(|| {
                self.corrupt(format!("message {sequence} has subject {subject:?}, not <prefix>.<stream>.<version>"))
            })
    }

    fn corrupt(&self, detail: String) -> Error {
        Error::Corrupt { location: format!("JetStream stream {}", self.inner.config.stream), detail }
    }

    /// The stream's last version and the sequence of its last event, as the leader has them; (0, 0) when
    /// the stream has none. Only the subject is read: it holds the version.
    async fn tail(&self, stream: &StreamName) -> Result<(u64, u64), Error> {
        let filter = self.stream_filter(stream);
        let request = GetRequest { last_by_subj: Some(&filter), ..Default::default() };
        let Some((subject, sequence, _)) = self.leader_get(&self.inner.events, request).await? else {
            return Ok((0, 0));
        };
        let (_, version) = self.parse_subject(&subject, sequence)?;
        self.remember_tail(stream, version, sequence);
        Ok((version, sequence))
    }

    /// The event of `stream` at `version`, from the leader.
    async fn event_at(&self, stream: &StreamName, version: u64) -> Result<Option<Envelope>, Error> {
        let subject = self.subject(stream, version);
        let request = GetRequest { last_by_subj: Some(&subject), ..Default::default() };
        let Some((subject, sequence, body)) = self.leader_get(&self.inner.events, request).await? else {
            return Ok(None);
        };
        self.decode_parts(&mut record::Names::default(), &subject, sequence, &body).map(Some)
    }

    /// The version of a stream that an append decided against version `expected` found moved. A clustered
    /// stream checks expectations against what it has accepted, not only applied: the event that moved the
    /// stream may still be on its way, so read the leader until it shows.
    async fn version_after_conflict(&self, stream: &StreamName, expected: u64) -> Result<u64, Error> {
        let deadline = tokio::time::Instant::now() + self.inner.config.timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            let (version, _) = self.tail(stream).await?;
            if version > expected {
                return Ok(version);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self.unavailable(format!(
                    "an append to {stream} at version {expected} conflicted, but no later version shows"
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Publishes `messages` (subject, body, event id) as one message or one atomic batch, the first
    /// expecting the stream's last event at `last_sequence`. Returns the sequence of the last one.
    async fn publish(
        &self,
        stream: &StreamName,
        last_sequence: u64,
        messages: &[(String, Bytes, Uuid)],
    ) -> Result<u64, PublishError> {
        let client = &self.inner.client;
        let batch_id = (messages.len() > 1).then(|| Uuid::now_v7().simple().to_string());
        let filter = self.stream_filter(stream);
        let last_sequence = last_sequence.to_string();
        for (i, (subject, body, event_id)) in messages.iter().enumerate() {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", event_id.to_string().as_str());
            if i == 0 {
                headers.insert("Nats-Expected-Stream", self.inner.config.stream.as_str());
                headers.insert("Nats-Expected-Last-Subject-Sequence", last_sequence.as_str());
                headers.insert("Nats-Expected-Last-Subject-Sequence-Subject", filter.as_str());
            }
            if let Some(batch_id) = &batch_id {
                headers.insert("Nats-Batch-Id", batch_id.as_str());
                headers.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
            }
            if i + 1 < messages.len() {
                client
                    .publish_with_headers(subject.clone(), headers, body.clone())
                    .await
                    .map_err(|e| PublishError::Ambiguous(e.to_string()))?;
                continue;
            }
            if batch_id.is_some() {
                headers.insert("Nats-Batch-Commit", "1");
            }
            let request = async_nats::Request::new()
                .headers(headers)
                .payload(body.clone())
                .timeout(Some(self.inner.config.timeout));
            let reply = client.send_request(subject.clone(), request).await.map_err(|e| {
                use async_nats::RequestErrorKind as Kind;
                match e.kind() {
                    Kind::NoResponders => PublishError::NoLeader,
                    _ => PublishError::Ambiguous(e.to_string()),
                }
            })?;
            let reply: PubReply = serde_json::from_slice(&reply.payload)
                .map_err(|e| PublishError::Ambiguous(format!("unreadable acknowledgement: {e}")))?;
            if let Some(error) = reply.error {
                if WRONG_LAST_SEQUENCE.contains(&error.err_code) {
                    return Err(PublishError::WrongLastSequence);
                }
                return Err(PublishError::Refused(format!(
                    "{} (code {}, error {})",
                    error.description, error.code, error.err_code
                )));
            }
            if let Some(count) = reply.count
                && count != messages.len() as u64
            {
                return Err(PublishError::Refused(format!(
                    "the server stored {count} of an append's {} events",
                    messages.len()
                )));
            }
            return Ok(reply.seq);
        }
        unreachable!("an append holds at least one event")
    }

    async fn info(&self, stream: &str) -> Result<InfoReply, Error> {
        request_info(&self.inner.client, stream, self.inner.config.timeout).await.map_err(|e| self.unavailable(e))
    }

    /// Reads a bucket's entry for `key` from the leader: its revision and decoded value.
    async fn kv_get<T: serde::de::DeserializeOwned>(&self, log: &Log, key: &str) -> Result<Option<(u64, T)>, Error> {
        let subject = format!("$KV.{}.{key}", log.bucket());
        let request = GetRequest { last_by_subj: Some(&subject), ..Default::default() };
        let Some((_, revision, body)) = self.leader_get(log, request).await? else { return Ok(None) };
        let limits = codec::Limits { max_input_bytes: usize::MAX, ..codec::Limits::default() };
        let value = codec::decode_with(&body, limits).map_err(|e| Error::Corrupt {
            location: format!("JetStream bucket {} key {key}", log.bucket()),
            detail: e.to_string(),
        })?;
        Ok(Some((revision, value)))
    }

    /// Writes a bucket's entry for `key` if its revision is still `revision` (0: no entry yet).
    async fn kv_put(&self, log: &Log, key: &str, value: Vec<u8>, revision: u64) -> Result<bool, Error> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Expected-Last-Subject-Sequence", revision.to_string().as_str());
        let subject = format!("$KV.{}.{key}", log.bucket());
        let reply = request(&self.inner.client, subject, Some(headers), value.into(), self.inner.config.timeout)
            .await
            .map_err(|e| self.unavailable(e))?;
        let reply: PubReply = serde_json::from_slice(&reply.payload)
            .map_err(|e| self.unavailable(format!("unreadable acknowledgement: {e}")))?;
        match reply.error {
            None => {
                log.saw(reply.seq);
                Ok(true)
            }
            Some(error) if WRONG_LAST_SEQUENCE.contains(&error.err_code) => Ok(false),
            Some(error) => Err(self.unavailable(format!("saving to {}: {}", log.name, error.description))),
        }
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

fn version_at_least(version: &str, (major, minor): (u32, u32)) -> bool {
    let mut parts = version.split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

fn check_names(config: &JetStreamConfig) -> Result<(), OpenError> {
    let name_ok = |n: &str| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    for (what, name) in [
        ("stream", &config.stream),
        ("snapshots bucket", &config.snapshots_bucket),
        ("checkpoints bucket", &config.checkpoints_bucket),
    ] {
        if !name_ok(name) {
            return Err(OpenError::InvalidConfig(format!("{what} name {name:?}: use letters, digits, - and _")));
        }
    }
    let prefix_ok = config.subject_prefix.split('.').all(name_ok);
    if !prefix_ok {
        return Err(OpenError::InvalidConfig(format!(
            "subject prefix {:?}: dot-separated tokens of letters, digits, - and _",
            config.subject_prefix
        )));
    }
    if config.replicas == 0 || config.replicas > 5 {
        return Err(OpenError::InvalidConfig(format!("replicas {}: 1 to 5", config.replicas)));
    }
    Ok(())
}

/// A request that is sent again while nothing answers its subject, for up to `timeout`: a stream (or a
/// bucket) answers nothing between its creation, or the loss of its leader, and the election of a leader.
/// Nothing was delivered then, so sending again is safe.
async fn request(
    client: &async_nats::Client,
    subject: String,
    headers: Option<HeaderMap>,
    payload: Bytes,
    timeout: Duration,
) -> Result<async_nats::Message, async_nats::RequestError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        let mut request = async_nats::Request::new().payload(payload.clone()).timeout(Some(timeout));
        if let Some(headers) = &headers {
            request = request.headers(headers.clone());
        }
        match client.send_request(subject.clone(), request).await {
            Err(e)
                if e.kind() == async_nats::RequestErrorKind::NoResponders && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(250));
            }
            other => return other,
        }
    }
}

async fn request_info(client: &async_nats::Client, stream: &str, timeout: Duration) -> Result<InfoReply, String> {
    let reply = request(client, format!("$JS.API.STREAM.INFO.{stream}"), None, Bytes::new(), timeout)
        .await
        .map_err(|e| format!("stream info of {stream}: {e}"))?;
    serde_json::from_slice(&reply.payload).map_err(|e| format!("stream info of {stream} unreadable: {e}"))
}

/// The stream's info, or `None` when it does not exist.
async fn existing(
    client: &async_nats::Client,
    stream: &str,
    timeout: Duration,
) -> Result<Option<(stream::Config, u64)>, OpenError> {
    let info = request_info(client, stream, timeout).await.map_err(OpenError::Unavailable)?;
    match (info.error, info.config) {
        (Some(e), _) if e.err_code == STREAM_NOT_FOUND => Ok(None),
        (Some(e), _) => Err(OpenError::Unavailable(format!("stream info of {stream}: {}", e.description))),
        (None, Some(config)) => Ok(Some((config, info.state.map_or(0, |s| s.last_seq)))),
        (None, None) => Err(OpenError::Unavailable(format!("stream info of {stream} came without a config"))),
    }
}

/// Creates the events stream or checks the one there; returns its last sequence.
async fn ensure_events_stream(
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    config: &JetStreamConfig,
) -> Result<u64, OpenError> {
    let subjects = format!("{}.>", config.subject_prefix);
    let (found, last) = match existing(client, &config.stream, config.timeout).await? {
        Some(found) => found,
        None => {
            let wanted = stream::Config {
                name: config.stream.clone(),
                description: Some("Weft events: <prefix>.<stream>.<version>, position = sequence".into()),
                subjects: vec![subjects.clone()],
                storage: StorageType::File,
                num_replicas: config.replicas,
                retention: RetentionPolicy::Limits,
                discard: DiscardPolicy::New,
                allow_direct: true,
                allow_atomic_publish: true,
                deny_delete: true,
                deny_purge: true,
                ..Default::default()
            };
            // A cluster's meta leader can be slow to answer on a loaded machine: ask again a few times.
            let mut attempt = 0;
            let created = loop {
                attempt += 1;
                match js.create_stream(wanted.clone()).await {
                    Ok(created) => break created,
                    Err(e) if attempt < 4 && e.to_string().contains("timed out") => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => {
                        return Err(OpenError::Unavailable(format!("creating stream {}: {e}", config.stream)));
                    }
                }
            };
            (created.cached_info().config.clone(), 0)
        }
    };
    let mut problems = Vec::new();
    if !found.subjects.contains(&subjects) {
        problems.push(format!("subjects are {:?}, they must include {subjects:?}", found.subjects));
    }
    if found.storage != StorageType::File {
        problems.push("storage must be file".into());
    }
    if found.num_replicas.max(1) != config.replicas {
        problems.push(format!("replicas are {}, configured {}", found.num_replicas, config.replicas));
    }
    if found.retention != RetentionPolicy::Limits {
        problems.push("retention must be limits (nothing is removed when consumed)".into());
    }
    if found.max_messages > 0 || found.max_bytes > 0 || !found.max_age.is_zero() || found.max_messages_per_subject > 0 {
        problems.push("it has a message, byte, age or per-subject limit: events would be deleted".into());
    }
    if !found.allow_atomic_publish {
        problems.push("atomic batches are not allowed (allow_atomic; a server older than 2.12 drops it)".into());
    }
    if !found.allow_direct {
        problems.push("direct gets are not allowed (allow_direct)".into());
    }
    if !problems.is_empty() {
        return Err(OpenError::Misconfigured { stream: config.stream.clone(), problems });
    }
    Ok(last)
}

/// Creates a KV bucket or checks the one there.
async fn ensure_bucket(
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    bucket: &str,
    config: &JetStreamConfig,
) -> Result<(), OpenError> {
    let stream = format!("KV_{bucket}");
    let found = match existing(client, &stream, config.timeout).await? {
        Some((found, _)) => found,
        None => {
            js.create_key_value(async_nats::jetstream::kv::Config {
                bucket: bucket.to_owned(),
                description: "Weft: one entry per name, newest wins".into(),
                history: 1,
                storage: StorageType::File,
                num_replicas: config.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| OpenError::Unavailable(format!("creating bucket {bucket}: {e}")))?;
            return Ok(());
        }
    };
    let mut problems = Vec::new();
    if found.storage != StorageType::File {
        problems.push("storage must be file".into());
    }
    if found.num_replicas.max(1) != config.replicas {
        problems.push(format!("replicas are {}, configured {}", found.num_replicas, config.replicas));
    }
    if !found.allow_direct {
        problems.push("direct gets are not allowed (allow_direct)".into());
    }
    if !found.max_age.is_zero() {
        problems.push("entries expire (max_age): saved states would vanish".into());
    }
    if !problems.is_empty() {
        return Err(OpenError::Misconfigured { stream, problems });
    }
    Ok(())
}

/// Keeps `head` at the last sequence of the events stream, from an ordered push consumer that delivers
/// headers only. Recreates the consumer after the connection or the server comes back.
/// An ordered push consumer's messages on `stream`'s subjects matching `filter`, delivered by `policy` (only
/// their headers when `headers_only`): what a follower of a stream reads.
pub(crate) async fn follow(
    js: &async_nats::jetstream::Context,
    stream: &str,
    filter: String,
    policy: DeliverPolicy,
    headers_only: bool,
) -> Result<push::Ordered, String> {
    let stream = js.get_stream_no_info(stream).await.map_err(|e| e.to_string())?;
    let consumer = stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: js.client().new_inbox(),
            filter_subject: filter,
            headers_only,
            deliver_policy: policy,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    consumer.messages().await.map_err(|e| e.to_string())
}

async fn follow_head(js: async_nats::jetstream::Context, config: JetStreamConfig, head: Arc<watch::Sender<u64>>) {
    let filter = format!("{}.>", config.subject_prefix);
    loop {
        let start = *head.borrow() + 1;
        let deliver = DeliverPolicy::ByStartSequence { start_sequence: start };
        match follow(&js, &config.stream, filter.clone(), deliver, true).await {
            Ok(mut messages) => {
                while let Some(message) = messages.next().await {
                    match message {
                        Ok(message) => {
                            if let Ok(info) = message.info() {
                                let sequence = info.stream_sequence;
                                head.send_if_modified(|h| {
                                    let moved = sequence > *h;
                                    *h = (*h).max(sequence);
                                    moved
                                });
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "following the event log's head"),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot follow the event log's head; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
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
        let filter = format!("{}.>", self.inner.config.subject_prefix);
        // Positions are dense, so everything up to the furthest sequence this store knows of must come back.
        let known = self.inner.events.seen().max(*self.inner.head.borrow());
        let want = if known >= from { limit.min((known - from + 1) as usize) } else { 0 };
        let messages = self.complete(want, || self.get_batch(from, &filter, limit)).await?;
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

    fn subscribe_all(&self, from: u64) -> Subscription {
        self.inner.follower.get_or_init(|| {
            let js = async_nats::jetstream::new(self.inner.client.clone());
            tokio::spawn(follow_head(js, self.inner.config.clone(), self.inner.head.clone()))
        });
        Subscription::new(Arc::new(self.clone()), self.inner.head.subscribe(), from)
    }

    fn limits(&self) -> Limits {
        self.inner.limits
    }
}

#[async_trait]
impl EventWrite for JetStreamStore {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, Error> {
        self.inner.limits.check_append(&events)?;
        let count = events.len() as u64;
        let recorded_at = Timestamp::now();
        // Whether a publish of this append went unacknowledged: a later conflict may then be with ourselves.
        let mut unacknowledged = false;
        for _ in 0..MAX_ANY_ATTEMPTS {
            let (version, last_sequence) = match expected {
                ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => (0, 0),
                ExpectedVersion::Exact(v) => match self.remembered_tail(stream) {
                    Some((version, sequence)) if version == v => (version, sequence),
                    _ => match self.event_at(stream, v).await? {
                        Some(event) => (v, event.position),
                        None => {
                            let actual = self.tail(stream).await?.0;
                            return Err(Error::Conflict { stream: stream.clone(), expected, actual });
                        }
                    },
                },
                ExpectedVersion::Any => self.tail(stream).await?,
            };
            let mut messages = Vec::with_capacity(events.len());
            for (i, event) in events.iter().enumerate() {
                let version = version + 1 + i as u64;
                let mut body = Vec::with_capacity(event.payload.len() + 96);
                record::encode(&mut body, event, stream, version, 0, recorded_at);
                messages.push((self.subject(stream, version), Bytes::from(body), event.event_id));
            }
            // Sent again (same event ids, so a copy that did land is a duplicate to the server) while no
            // acknowledgement comes or no leader answers, for up to the time-out.
            let deadline = tokio::time::Instant::now() + self.inner.config.timeout;
            let mut pause = Duration::from_millis(20);
            let outcome = loop {
                match self.publish(stream, last_sequence, &messages).await {
                    Err(PublishError::Ambiguous(reason)) if tokio::time::Instant::now() < deadline => {
                        tracing::debug!(%stream, %reason, "no acknowledgement for an append; sending it again");
                        unacknowledged = true;
                    }
                    Err(PublishError::NoLeader) if tokio::time::Instant::now() < deadline => {}
                    other => break other,
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            };
            match outcome {
                Ok(last) => {
                    self.saw(last);
                    self.remember_tail(stream, version + count, last);
                    return Ok(Appended {
                        version: version + count,
                        first_position: last + 1 - count,
                        last_position: last,
                    });
                }
                Err(PublishError::WrongLastSequence) => {
                    // After a publish whose acknowledgement was lost, the conflict may be with ourselves.
                    if unacknowledged
                        && let Some(first) = self.event_at(stream, version + 1).await?
                        && first.event_id == events[0].event_id
                    {
                        let last = first.position + count - 1;
                        self.saw(last);
                        return Ok(Appended {
                            version: version + count,
                            first_position: first.position,
                            last_position: last,
                        });
                    }
                    let actual = self.version_after_conflict(stream, version).await?;
                    if expected == ExpectedVersion::Any {
                        continue;
                    }
                    return Err(Error::Conflict { stream: stream.clone(), expected, actual });
                }
                Err(PublishError::Ambiguous(reason)) => {
                    return Err(self.unavailable(format!("no acknowledgement for an append to {stream}: {reason}")));
                }
                Err(PublishError::NoLeader) => {
                    return Err(self.unavailable(format!("no leader answered an append to {stream}")));
                }
                Err(PublishError::Refused(reason)) => {
                    return Err(self.unavailable(format!("an append to {stream} was refused: {reason}")));
                }
            }
        }
        Err(self.unavailable(format!("stream {stream} kept moving: {MAX_ANY_ATTEMPTS} attempts to append lost")))
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), Error> {
        self.inner.limits.check_snapshot(&snapshot)?;
        let value = codec::encode(&snapshot).map_err(|e| self.unavailable(e))?;
        if value.len() > self.inner.max_message_bytes {
            return Err(Error::SnapshotTooLarge { size: snapshot.payload.len(), limit: self.inner.max_message_bytes });
        }
        let actual = self.tail(&snapshot.stream).await?.0;
        if snapshot.version > actual {
            return Err(Error::SnapshotAhead { stream: snapshot.stream.clone(), version: snapshot.version, actual });
        }
        let log = &self.inner.snapshots;
        for _ in 0..MAX_CAS_ATTEMPTS {
            let current: Option<(u64, Snapshot)> = self.kv_get(log, snapshot.stream.as_str()).await?;
            if current.as_ref().is_some_and(|(_, c)| c.version >= snapshot.version) {
                return Ok(());
            }
            let revision = current.map_or(0, |(r, _)| r);
            if self.kv_put(log, snapshot.stream.as_str(), value.clone(), revision).await? {
                return Ok(());
            }
        }
        Err(self.unavailable(format!("the snapshot of {} kept changing under a save", snapshot.stream)))
    }

    async fn save_checkpoint(&self, checkpoint: Checkpoint) -> Result<(), Error> {
        self.inner.limits.check_checkpoint(&checkpoint)?;
        let value = codec::encode(&checkpoint).map_err(|e| self.unavailable(e))?;
        if value.len() > self.inner.max_message_bytes {
            return Err(Error::SnapshotTooLarge { size: checkpoint.state.len(), limit: self.inner.max_message_bytes });
        }
        if checkpoint.position > *self.inner.head.borrow() {
            let head = self.head().await?;
            if checkpoint.position > head {
                return Err(Error::CheckpointAhead {
                    name: checkpoint.name.clone(),
                    position: checkpoint.position,
                    head,
                });
            }
        }
        let log = &self.inner.checkpoints;
        for _ in 0..MAX_CAS_ATTEMPTS {
            let current: Option<(u64, Checkpoint)> = self.kv_get(log, checkpoint.name.as_str()).await?;
            if current.as_ref().is_some_and(|(_, c)| c.position > checkpoint.position) {
                return Ok(());
            }
            let revision = current.map_or(0, |(r, _)| r);
            if self.kv_put(log, checkpoint.name.as_str(), value.clone(), revision).await? {
                return Ok(());
            }
        }
        Err(self.unavailable(format!("checkpoint {} kept changing under a save", checkpoint.name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions_compare() {
        assert!(version_at_least("2.15.1", (2, 12)));
        assert!(version_at_least("2.12.0-beta", (2, 12)));
        assert!(version_at_least("3.0.0", (2, 12)));
        assert!(!version_at_least("2.9.10", (2, 12)));
        assert!(!version_at_least("garbage", (2, 12)));
    }

    #[test]
    fn names_that_break_subjects_are_refused() {
        let bad = |f: fn(&mut JetStreamConfig)| {
            let mut config = JetStreamConfig::default();
            f(&mut config);
            check_names(&config).is_err()
        };
        assert!(!bad(|_| {}));
        assert!(bad(|c| c.stream = "A.B".into()));
        assert!(bad(|c| c.subject_prefix = "weft.>".into()));
        assert!(bad(|c| c.subject_prefix = "weft..store".into()));
        assert!(bad(|c| c.snapshots_bucket = String::new()));
        assert!(bad(|c| c.replicas = 0));
    }
}
