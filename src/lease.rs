//! Leader election for the process managers of nodes that share a JetStream store: one lease, a key in a KV
//! bucket whose entries expire on the server.
//!
//! A node takes the lease by writing the key only if it holds nothing (`Nats-Expected-Last-Subject-Sequence:
//! 0`), and keeps it by rewriting it only if it still holds the node's own revision. The bucket's `max_age` is
//! the lease's time-to-live, counted by the server's clock alone: a holder that stops renewing (killed,
//! partitioned) loses the key when its last write ages out, and another node's next try takes it. A holder
//! stops its process managers on its own once it has gone `ttl - margin` without a successful renewal, before
//! the server can hand the lease to anyone else; what overlap remains (a paused process) is made harmless by
//! the process managers' derived command ids, and a task taken over is failed as `interrupted` and retried.

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use serde::Deserialize;

/// Settings of the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseOptions {
    /// The KV bucket.
    pub bucket: String,
    /// The key: one lease per role.
    pub key: String,
    /// How long a lease lives without renewal.
    pub ttl: Duration,
    /// How often the holder renews it, and how often the others try to take it.
    pub renew_every: Duration,
    /// Replicas of the bucket.
    pub replicas: usize,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        Self {
            bucket: "weft_leases".into(),
            key: "processes".into(),
            ttl: Duration::from_secs(10),
            renew_every: Duration::from_secs(2),
            replicas: 1,
        }
    }
}

impl LeaseOptions {
    /// How long the holder may go without a successful renewal before it gives the lease up: the TTL less
    /// two renewal periods, so it has stopped well before the server lets the key expire.
    pub fn self_fence_after(&self) -> Duration {
        self.ttl.saturating_sub(self.renew_every * 2)
    }
}

/// A lease this node holds or tries to take.
pub struct Lease {
    client: async_nats::Client,
    options: LeaseOptions,
    subject: String,
    holder: String,
    /// The revision of our entry while we hold the lease.
    revision: Option<u64>,
}

#[derive(Deserialize)]
struct Ack {
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// Why the lease could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Its bucket could not be created.
    #[error("creating lease bucket {bucket}: {reason}")]
    Bucket {
        /// The bucket.
        bucket: String,
        /// Why.
        reason: String,
    },
    /// The server did not answer the write.
    #[error("writing the lease: {0}")]
    Request(#[from] async_nats::RequestError),
    /// The server's answer is not JetStream's publish acknowledgement.
    #[error("the lease write's answer: {0}")]
    Answer(#[from] serde_json::Error),
}

impl Lease {
    /// Creates the bucket if missing (entries live `ttl`) and returns a lease for `holder` (a name that says
    /// which node holds it, for operators: `nats kv get weft_leases processes`).
    pub async fn new(client: async_nats::Client, options: LeaseOptions, holder: String) -> Result<Self, Error> {
        let description = "Weft leases: who runs the process managers";
        crate::nats::expiring_bucket(client.clone(), &options.bucket, description, options.ttl, options.replicas)
            .await
            .map_err(|reason| Error::Bucket { bucket: options.bucket.clone(), reason })?;
        let subject = format!("$KV.{}.{}", options.bucket, options.key);
        Ok(Self { client, options, subject, holder, revision: None })
    }

    /// Whether this node holds the lease (as of its last successful write).
    pub fn held(&self) -> bool {
        self.revision.is_some()
    }

    /// Takes the lease if nobody holds it, or renews ours. `Ok(false)`: another node holds it (or took it
    /// from us). `Err`: the server did not answer; the caller decides by time whether we still hold it.
    pub async fn try_hold(&mut self) -> Result<bool, Error> {
        let expected = self.revision.unwrap_or(0);
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Expected-Last-Subject-Sequence", expected.to_string().as_str());
        let request = async_nats::Request::new()
            .headers(headers)
            .payload(Bytes::from(self.holder.clone()))
            .timeout(Some(self.options.renew_every));
        let reply = self.client.send_request(self.subject.clone(), request).await?;
        let ack: Ack = serde_json::from_slice(&reply.payload)?;
        match ack.error {
            None => {
                self.revision = Some(ack.seq);
                Ok(true)
            }
            Some(_) => {
                self.revision = None;
                Ok(false)
            }
        }
    }

    /// Forgets that we hold the lease (after giving it up on our own).
    pub fn forget(&mut self) {
        self.revision = None;
    }

    /// The settings.
    pub fn options(&self) -> &LeaseOptions {
        &self.options
    }
}
