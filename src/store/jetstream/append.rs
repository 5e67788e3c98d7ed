//! Appending: publishing one message or one atomic batch against the stream's expected last sequence, and
//! reading the stream's end again after a conflict.

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use uuid::Uuid;
use weft_events::{Error, StreamName};

use super::JetStreamStore;
use super::wire::{PubReply, PublishError, WRONG_LAST_SEQUENCE};

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
