//! Opening: the server version check, names that make valid subjects, the events stream and the buckets
//! created or checked, and the follower that keeps the head position.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{DeliverPolicy, push};
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::watch;

use super::wire::{InfoReply, STREAM_NOT_FOUND};
use super::{JetStreamConfig, OpenError};

pub(super) fn version_at_least(version: &str, (major, minor): (u32, u32)) -> bool {
    let mut parts = version.split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

pub(super) fn check_names(config: &JetStreamConfig) -> Result<(), OpenError> {
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
    let most = weft_events::partition::MAX_PARTITIONS;
    if !(1..=most).contains(&config.partitions) {
        return Err(OpenError::InvalidConfig(format!("partitions {}: 1 to {most}", config.partitions)));
    }
    Ok(())
}

/// A request that is sent again while nothing answers its subject, for up to `timeout`: a stream (or a
/// bucket) answers nothing between its creation, or the loss of its leader, and the election of a leader.
/// Nothing was delivered then, so sending again is safe.
pub(super) async fn request(
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

pub(super) async fn request_info(
    client: &async_nats::Client,
    stream: &str,
    timeout: Duration,
) -> Result<InfoReply, String> {
    let reply = request(client, format!("$JS.API.STREAM.INFO.{stream}"), None, Bytes::new(), timeout)
        .await
        .map_err(|e| format!("stream info of {stream}: {e}"))?;
    serde_json::from_slice(&reply.payload).map_err(|e| format!("stream info of {stream} unreadable: {e}"))
}

/// The stream's info, or `None` when it does not exist.
pub(super) async fn existing(
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

/// Whether a failed creation of the events stream may pass on try `attempt + 1`, half a second later: a
/// time-out (a loaded meta leader) three times, a cluster that does not yet know enough of its peers to place
/// the replicas (it has just formed) for ten seconds.
fn may_pass_again(e: &async_nats::jetstream::context::CreateStreamError, attempt: u32) -> bool {
    use async_nats::jetstream::{ErrorCode, context::CreateStreamErrorKind};
    match e.kind() {
        CreateStreamErrorKind::JetStream(js) if js.error_code() == ErrorCode::CLUSTER_NO_PEERS => attempt < 20,
        CreateStreamErrorKind::TimedOut => attempt < 4,
        _ => attempt < 4 && e.to_string().contains("timed out"),
    }
}

/// The stream metadata key under which the events stream records its number of partitions.
pub(super) const PARTITIONS_KEY: &str = "weft_partitions";

/// Creates the events stream (its events filed under `config.partitions` partitions) or checks the one there;
/// returns its last sequence and its number of partitions (`None`: a stream of the first layout, created
/// before partitions, whose subjects hold none).
pub(super) async fn ensure_events_stream(
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    config: &JetStreamConfig,
) -> Result<(u64, Option<u32>), OpenError> {
    let subjects = format!("{}.>", config.subject_prefix);
    let (found, last) = match existing(client, &config.stream, config.timeout).await? {
        Some(found) => found,
        None => {
            let wanted = stream::Config {
                name: config.stream.clone(),
                description: Some("Weft events: <prefix>.<partition>.<stream>.<version>, position = sequence".into()),
                metadata: [(PARTITIONS_KEY.to_owned(), config.partitions.to_string())].into(),
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
            // A cluster's meta leader can be slow to answer on a loaded machine, and right after the cluster
            // forms it places a replicated stream only on the peers it has heard from yet: ask again for a
            // while (creating the same stream twice is not an error).
            let mut attempt = 0;
            let created = loop {
                attempt += 1;
                match js.create_stream(wanted.clone()).await {
                    Ok(created) => break created,
                    Err(e) if may_pass_again(&e, attempt) => {
                        tracing::debug!(attempt, error = %e, "creating the events stream again");
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
    let partitions = match found.metadata.get(PARTITIONS_KEY) {
        None => None,
        Some(count) => match count.parse::<u32>() {
            Ok(count) if (1..=weft_events::partition::MAX_PARTITIONS).contains(&count) => Some(count),
            _ => {
                problems.push(format!(
                    "metadata {PARTITIONS_KEY} is {count:?}, not a number of partitions from 1 to {}",
                    weft_events::partition::MAX_PARTITIONS
                ));
                None
            }
        },
    };
    if !problems.is_empty() {
        return Err(OpenError::Misconfigured { stream: config.stream.clone(), problems });
    }
    Ok((last, partitions))
}

/// Creates a KV bucket or checks the one there.
pub(super) async fn ensure_bucket(
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

/// An ordered push consumer's messages on `stream`'s subjects matching `filter`, delivered by `policy` (only
/// their headers when `headers_only`): what a follower of a stream reads.
pub async fn follow(
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

/// Keeps `heads` at the last sequence of the events stream and of each of its partitions, from an ordered push
/// consumer that delivers headers only. Recreates the consumer after the connection or the server comes back.
pub(super) async fn follow_head(js: async_nats::jetstream::Context, config: JetStreamConfig, heads: Arc<Heads>) {
    let head = &heads.all;
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
                                if let Some(partition) = heads.partition_of(&config.subject_prefix, &message.subject) {
                                    raise(partition, sequence);
                                }
                                raise(head, sequence);
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

/// Moves `head` up to `sequence` (never down), waking its watchers when it moved.
pub(super) fn raise(head: &watch::Sender<u64>, sequence: u64) {
    head.send_if_modified(|h| {
        let moved = sequence > *h;
        *h = (*h).max(sequence);
        moved
    });
}

/// The last sequence of the events stream, and of each of its partitions, as far as this store has seen.
pub(super) struct Heads {
    pub(super) all: watch::Sender<u64>,
    /// One per partition; none for a stream of the first layout.
    pub(super) partitions: Vec<watch::Sender<u64>>,
}

impl Heads {
    pub(super) fn new(head: u64, partitions: Option<u32>) -> Self {
        let count = partitions.unwrap_or(0) as usize;
        // Until the follower reports them, each partition's head is the log's: a reader looks once.
        Self { all: watch::channel(head).0, partitions: (0..count).map(|_| watch::channel(head).0).collect() }
    }

    /// The head of the partition an event's `subject` (under `prefix`) is filed under, if any.
    pub(super) fn partition_of(&self, prefix: &str, subject: &str) -> Option<&watch::Sender<u64>> {
        let token = subject.strip_prefix(prefix)?.strip_prefix('.')?.split('.').next()?;
        self.partitions.get(token.parse::<usize>().ok()?)
    }
}

/// The subjects of `stream` that hold messages and match `filter` (a stream's info, listing them).
pub(crate) async fn subjects(
    stream: &async_nats::jetstream::stream::Stream,
    filter: String,
) -> Result<Vec<String>, async_nats::Error> {
    use futures::TryStreamExt as _;
    let subjects: Vec<(String, usize)> = stream.info_with_subjects(filter).await?.try_collect().await?;
    Ok(subjects.into_iter().map(|(subject, _)| subject).collect())
}
