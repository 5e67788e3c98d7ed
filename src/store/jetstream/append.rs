//! Writing (`EventWrite`): appends, each publishing one message or one atomic batch against the stream's
//! expected last sequence (and reading the stream's end again after a conflict); snapshots and checkpoints.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_trait::async_trait;
use bytes::Bytes;
use uuid::Uuid;
use weft_events::{
    Appended, Checkpoint, Error, EventRead, EventWrite, ExpectedVersion, NewEvent, Snapshot, StreamName, Timestamp,
    codec,
};

use super::wire::{PubReply, PublishError, WRONG_LAST_SEQUENCE};
use super::{JetStreamStore, MAX_ANY_ATTEMPTS, MAX_CAS_ATTEMPTS};
use crate::store::record;

/// A message of an append: its subject, its body (the event's record), its event id, and the partition and
/// fencing token of the node that appends it (`crate::cluster::ownership::Fence`, as its header's value).
pub(super) type Message = (String, Bytes, Uuid, Option<std::sync::Arc<str>>);

impl JetStreamStore {
    /// The version of a stream that an append decided against version `expected` found moved. A clustered
    /// stream checks expectations against what it has accepted, not only applied: the event that moved the
    /// stream may still be on its way, so read the leader until it shows.
    pub(super) async fn version_after_conflict(&self, stream: &StreamName, expected: u64) -> Result<u64, Error> {
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

    /// Publishes `messages` (subject, body, event id) as one message or one atomic batch, the first expecting
    /// its subject (its version's) to hold no message yet. Returns the sequence of the last one.
    pub(super) async fn publish(&self, messages: &[Message]) -> Result<u64, PublishError> {
        self.publish_appends(&[messages]).await
    }

    /// Publishes the messages of `appends` (each one append's, the first on the subject of the version after the
    /// one the append was decided against) as one message or one atomic batch, each append's first message with
    /// its own checks. Returns the sequence of the last message.
    ///
    /// The check is `Nats-Expected-Last-Subject-Sequence: 0` on the first message's own subject, the version
    /// after the one the append was decided against: the server stores the append only if no event holds
    /// that version yet. The caller has seen the version before it (remembered from an acknowledgement, or
    /// read from the leader), and versions are dense and never deleted, so the stream was exactly at that
    /// version. The server answers this from its index of subjects in constant time; a check of the last
    /// sequence on the wildcard `<prefix>.<stream>.*` walked every version of the stream, so appends to a long
    /// stream grew slower with its length.
    pub(super) async fn publish_appends(&self, appends: &[&[Message]]) -> Result<u64, PublishError> {
        let client = &self.inner.client;
        let (total, started): (usize, _) =
            (appends.iter().map(|messages| messages.len()).sum(), std::time::Instant::now());
        let batch_id = (total > 1).then(|| Uuid::now_v7().simple().to_string());
        let mut n = 0;
        for messages in appends {
            for (i, (subject, body, event_id, fence)) in messages.iter().enumerate() {
                n += 1;
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", event_id.to_string().as_str());
                if let Some(fence) = fence {
                    headers.insert(crate::cluster::ownership::FENCE_HEADER, &**fence);
                }
                if i == 0 {
                    headers.insert("Nats-Expected-Stream", self.inner.config.stream.as_str());
                    headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
                }
                if let Some(batch_id) = &batch_id {
                    headers.insert("Nats-Batch-Id", batch_id.as_str());
                    headers.insert("Nats-Batch-Sequence", n.to_string().as_str());
                }
                if n < total {
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
                    && count != total as u64
                {
                    return Err(PublishError::Refused(format!("the server stored {count} of a batch of {total}")));
                }
                crate::store::committed(appends.len(), total, started.elapsed());
                return Ok(reply.seq);
            }
        }
        unreachable!("an append holds at least one event")
    }
}

#[async_trait]
impl EventWrite for JetStreamStore {
    #[tracing::instrument(name = "append", level = "debug", skip_all, fields(store = "jetstream", stream = stream.as_str(), events = events.len()))]
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
            // The version the append goes after, seen to exist: the publish checks that the next is free.
            let version = match expected {
                ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => 0,
                ExpectedVersion::Exact(v) => match self.remembered_tail(stream) {
                    Some((version, _)) if version == v => v,
                    _ => match self.event_at(stream, v).await? {
                        Some(_) => v,
                        None => {
                            let actual = self.tail(stream).await?.0;
                            return Err(Error::Conflict { stream: stream.clone(), expected, actual });
                        }
                    },
                },
                ExpectedVersion::Any => self.tail(stream).await?.0,
            };
            let fence: Option<Arc<str>> = match self.inner.fence.get() {
                Some(partitions) => partitions
                    .fence(stream)
                    .map_err(|fenced| self.unavailable(format!("an append to {stream}: {fenced}")))?
                    .map(|fence| fence.header().into()),
                None => None,
            };
            let mut messages = Vec::with_capacity(events.len());
            for (i, event) in events.iter().enumerate() {
                let version = version + 1 + i as u64;
                let mut body = Vec::with_capacity(event.payload.len() + 96);
                record::encode(&mut body, event, stream, version, 0, recorded_at);
                messages.push((self.subject(stream, version), Bytes::from(body), event.event_id, fence.clone()));
            }
            // Sent again (same event ids, so a copy that did land is a duplicate to the server) while no
            // acknowledgement comes or no leader answers, for up to the time-out.
            let deadline = tokio::time::Instant::now() + self.inner.config.timeout;
            let mut pause = Duration::from_millis(20);
            let outcome = loop {
                // A node whose lease lapsed while it sent again stops sending: another may own the stream now.
                if let Some(Err(fenced)) = self.inner.fence.get().map(|p| p.fence(stream)) {
                    return Err(self.unavailable(format!("an append to {stream}: {fenced}")));
                }
                match self.publish_grouped(stream, &messages).await {
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
                    self.saw_in(stream, last);
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
                        self.saw_in(stream, last);
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
        if checkpoint.position > *self.inner.heads.all.borrow() {
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

    fn combine_from(&self) -> usize {
        self.batch_from()
    }
}
