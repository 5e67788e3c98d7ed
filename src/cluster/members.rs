//! Which nodes share a JetStream store now: each node announces itself in a KV bucket and rewrites its entry
//! every [`MembersOptions::beat_every`]; the bucket's `max_age` ([`MembersOptions::ttl`]) makes the server
//! drop the entry of a node that stopped beating (killed, partitioned), so the live nodes are the bucket's keys.
//! A node that stops cleanly deletes its entry at once.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// Settings of the membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembersOptions {
    /// The KV bucket.
    pub bucket: String,
    /// How long an entry lives without being rewritten: a dead node is gone from the list after at most this.
    pub ttl: Duration,
    /// How often a node rewrites its entry.
    pub beat_every: Duration,
    /// Replicas of the bucket.
    pub replicas: usize,
}

impl Default for MembersOptions {
    fn default() -> Self {
        Self {
            bucket: "weft_nodes".into(),
            ttl: Duration::from_secs(3),
            beat_every: Duration::from_secs(1),
            replicas: 1,
        }
    }
}

/// What a node says of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its name: unique among the nodes (host, process id and a random suffix).
    pub id: String,
    /// Its HTTP address, as it listens.
    pub http: Option<String>,
    /// When it started, µs since the epoch.
    pub started_at: i64,
    /// When it last beat, µs since the epoch (its own clock).
    pub beat_at: i64,
    /// Its version.
    pub version: String,
}

/// Why the membership could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Its bucket could not be created or opened.
    #[error("membership bucket {bucket}: {reason}")]
    Bucket {
        /// The bucket.
        bucket: String,
        /// Why.
        reason: String,
    },
    /// Writing this node's entry failed.
    #[error("writing this node's membership: {0}")]
    Write(String),
    /// Reading the entries failed.
    #[error("reading the membership: {0}")]
    Read(String),
}

/// This node's place in the membership.
#[derive(Clone)]
pub struct Members {
    kv: async_nats::jetstream::kv::Store,
    me: Member,
}

/// A name for this node: host, process id and a random suffix, in the characters a KV key allows.
pub fn node_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "node".into());
    let host: String =
        host.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' }).collect();
    format!("{host}-{}-{:04x}", std::process::id(), rand::random::<u16>())
}

impl Members {
    /// Opens the bucket (creating it if missing) and announces `me`.
    pub async fn join(client: async_nats::Client, options: &MembersOptions, me: Member) -> Result<Self, Error> {
        let description = "Weft nodes sharing this store, each rewritten while the node lives";
        let kv = crate::nats::expiring_bucket(client, &options.bucket, description, options.ttl, options.replicas)
            .await
            .map_err(|reason| Error::Bucket { bucket: options.bucket.clone(), reason })?;
        let members = Self { kv, me };
        // A bucket just created in a cluster may not be known yet to the server this node is connected to
        // ("no stream found"): the first beat is tried again for a while.
        let deadline = tokio::time::Instant::now() + options.ttl * 2;
        loop {
            match members.beat().await {
                Ok(()) => return Ok(members),
                Err(error) if tokio::time::Instant::now() >= deadline => return Err(error),
                Err(error) => tracing::debug!(%error, "announcing this node; trying again"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Rewrites this node's entry (with the time of the beat).
    pub async fn beat(&self) -> Result<(), Error> {
        let mut me = self.me.clone();
        me.beat_at = weft_events::Timestamp::now().0;
        let value = serde_json::to_vec(&me).map_err(|e| Error::Write(e.to_string()))?;
        self.kv.put(&me.id, Bytes::from(value)).await.map_err(|e| Error::Write(e.to_string()))?;
        Ok(())
    }

    /// Removes this node's entry: the others see it gone at once.
    pub async fn leave(&self) -> Result<(), Error> {
        self.kv.purge(&self.me.id).await.map_err(|e| Error::Write(e.to_string()))
    }

    /// This node.
    pub fn me(&self) -> &Member {
        &self.me
    }

    /// The live nodes, by id: the entries the server still holds.
    pub async fn live(&self) -> Result<Vec<Member>, Error> {
        let mut keys = self.kv.keys().await.map_err(|e| Error::Read(e.to_string()))?;
        let mut members = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| Error::Read(e.to_string()))?;
            let Some(value) = self.kv.get(&key).await.map_err(|e| Error::Read(e.to_string()))? else { continue };
            // An entry that is not a member (written by hand) is skipped, not fatal.
            if let Ok(member) = serde_json::from_slice::<Member>(&value) {
                members.push(member);
            }
        }
        members.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(members)
    }
}
