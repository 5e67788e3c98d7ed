//! Reading: pages of a stream from the replicas (checked for staleness), single messages from the leader,
//! and decoding stored messages into events.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use weft_events::{Envelope, Error, StreamName};

use super::setup::request;
use super::wire::{GetRequest, MsgGetReply};
use super::{JetStreamStore, Log, header_u64};
use crate::store::record;

impl JetStreamStore {
    /// Up to `count` events of `stream` from version `first` on, from the events stream's replicas.
    pub(super) async fn page_of(&self, stream: &StreamName, first: u64, count: usize) -> Result<Vec<Envelope>, Error> {
        // Where version `first` is: from the leader; a stream shorter than that reads as empty.
        let Some(head) = self.event_at(stream, first).await? else { return Ok(Vec::new()) };
        let mut events = vec![head];
        if count > 1 {
            let mut names = record::Names::default();
            let filter = self.stream_filter(stream);
            for message in self.get_batch(events[0].position + 1, Some(&filter), count - 1).await? {
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
    pub(super) async fn complete<T, F, Fut>(&self, want: usize, mut read: F) -> Result<Vec<T>, Error>
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
    pub(super) fn saw(&self, sequence: u64) {
        self.inner.events.saw(sequence);
        super::raise(&self.inner.heads.all, sequence);
    }

    /// One message, from the stream's leader; `None` when there is none.
    pub(super) async fn leader_get(
        &self,
        log: &Log,
        get: GetRequest<'_>,
    ) -> Result<Option<(String, u64, Bytes)>, Error> {
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

    /// Up to `limit` messages of the events stream from sequence `from` on whose subjects match `filter`, or
    /// every message without one. The whole log is read without a filter, not with `<prefix>.>`: the server
    /// counts the messages left after a batch, which is a subtraction without a filter but a walk over every
    /// subject (every event has its own) with one, so a filtered read of the log slowed as the log grew.
    pub(super) async fn get_batch(
        &self,
        from: u64,
        filter: Option<&str>,
        limit: usize,
    ) -> Result<Vec<async_nats::Message>, Error> {
        let log = &self.inner.events;
        let request = GetRequest { seq: Some(from), next_by_subj: filter, batch: Some(limit), ..Default::default() };
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
    pub(super) fn decode(&self, names: &mut record::Names, message: &async_nats::Message) -> Result<Envelope, Error> {
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
    pub(super) fn decode_parts(
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
    pub(super) fn parse_subject<'s>(&self, subject: &'s str, sequence: u64) -> Result<(&'s str, u64), Error> {
        subject
            .strip_prefix(self.inner.config.subject_prefix.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|rest| match self.inner.partitions {
                None => Some(rest),
                Some(_) => rest.split_once('.').map(|(_, rest)| rest),
            })
            .and_then(|rest| rest.rsplit_once('.'))
            .and_then(|(stream, version)| Some((stream, version.parse::<u64>().ok()?)))
            .ok_or_else(|| {
                self.corrupt(format!(
                    "message {sequence} has subject {subject:?}, not <prefix>.<partition>.<stream>.<version>"
                ))
            })
    }

    pub(super) fn corrupt(&self, detail: String) -> Error {
        Error::Corrupt { location: format!("JetStream stream {}", self.inner.config.stream), detail }
    }

    /// The stream's last version and the sequence of its last event, as the leader has them; (0, 0) when
    /// the stream has none. Only the subject is read: it holds the version.
    pub(super) async fn tail(&self, stream: &StreamName) -> Result<(u64, u64), Error> {
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
    pub(super) async fn event_at(&self, stream: &StreamName, version: u64) -> Result<Option<Envelope>, Error> {
        let subject = self.subject(stream, version);
        let request = GetRequest { last_by_subj: Some(&subject), ..Default::default() };
        let Some((subject, sequence, body)) = self.leader_get(&self.inner.events, request).await? else {
            return Ok(None);
        };
        self.decode_parts(&mut record::Names::default(), &subject, sequence, &body).map(Some)
    }
}
