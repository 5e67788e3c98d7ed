//! The snapshot and checkpoint buckets: compare-and-set puts and leader gets of one key.

use async_nats::HeaderMap;
use weft_events::{Error, codec};

use super::setup::request;
use super::wire::{GetRequest, PubReply, WRONG_LAST_SEQUENCE};
use super::{JetStreamStore, Log};

impl JetStreamStore {
    /// Reads a bucket's entry for `key` from the leader: its revision and decoded value.
    pub(super) async fn kv_get<T: serde::de::DeserializeOwned>(
        &self,
        log: &Log,
        key: &str,
    ) -> Result<Option<(u64, T)>, Error> {
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

    /// The keys a bucket holds an entry for (deleted ones too, whose entries read as none), in name order.
    pub(super) async fn kv_keys(&self, log: &Log) -> Result<Vec<weft_events::StreamName>, Error> {
        let js = async_nats::jetstream::new(self.inner.client.clone());
        let prefix = format!("$KV.{}.", log.bucket());
        let stream = js.get_stream(&log.name).await.map_err(|e| self.unavailable(e))?;
        let subjects = super::subjects(&stream, format!("{prefix}>")).await.map_err(|e| self.unavailable(e))?;
        let mut keys: Vec<String> =
            subjects.iter().filter_map(|subject| subject.strip_prefix(&prefix).map(str::to_owned)).collect();
        keys.sort_unstable();
        Ok(keys.iter().map(|key| weft_events::StreamName::from_stored(key)).collect())
    }

    /// Writes a bucket's entry for `key` if its revision is still `revision` (0: no entry yet).
    pub(super) async fn kv_put(&self, log: &Log, key: &str, value: Vec<u8>, revision: u64) -> Result<bool, Error> {
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
}
