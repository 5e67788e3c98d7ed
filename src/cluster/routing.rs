//! Commands to the owner of their partition, by nats-server's subject mapping.
//!
//! With the mapping `weft.cmd.*.*` -> `weft.cmd.{{wildcard(1)}}.{{wildcard(2)}}.{{partition(N,1,2)}}` in the
//! server's account (`docs/cluster.md`), a command a client publishes on the documented
//! `weft.cmd.<aggregate>.<id>` arrives as `weft.cmd.<aggregate>.<id>.<partition>`. The router subscribes to
//! `weft.cmd.*.*.<p>` for each partition `p` this node serves ([`super::ownership::Partitions::serving`]) and
//! hands each command to the intake's service of its aggregate ([`Inboxes`]), which runs it as it would one
//! taken off the bus. When a partition is handed over, its subscription is drained (the server stops
//! routing to it, and what it had routed already is still handled) and the ownership task waits until its
//! commands in flight are answered before it releases the lease.
//!
//! [`check_mapping`] proves at start that the server maps command subjects into the node's number of
//! partitions: a node that expects the mapping and would otherwise never see a command refuses to start.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;

use super::ownership::Partitions;
use crate::bus::{CONTENT_TYPE, Headers, JSON, Message};
use crate::protocol::{self, COMMANDS, QUEUE_GROUP};

/// Commands a service's inbox holds before the router waits for it.
const INBOX: usize = 1024;

/// The intake's services' inboxes: the router's end (senders by aggregate) and the services' (receivers, each
/// taken once). Cheap to clone.
#[derive(Clone)]
pub struct Inboxes {
    senders: Arc<HashMap<&'static str, mpsc::Sender<Message>>>,
    receivers: Arc<Mutex<HashMap<&'static str, mpsc::Receiver<Message>>>>,
    partitions: Partitions,
}

impl std::fmt::Debug for Inboxes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inboxes").field("partitions", &self.partitions).finish_non_exhaustive()
    }
}

impl Inboxes {
    /// An inbox for each partitioned aggregate, for the partitions of `partitions`.
    pub fn new(partitions: Partitions) -> Self {
        let (mut senders, mut receivers) = (HashMap::new(), HashMap::new());
        for aggregate in super::ownership::PARTITIONED {
            let (sender, receiver) = mpsc::channel(INBOX);
            senders.insert(aggregate, sender);
            receivers.insert(aggregate, receiver);
        }
        Self { senders: Arc::new(senders), receivers: Arc::new(Mutex::new(receivers)), partitions }
    }

    /// The commands of `aggregate` the router hands over, once (the service of that aggregate takes them).
    pub fn take(&self, aggregate: &str) -> Option<mpsc::Receiver<Message>> {
        self.receivers.lock().expect("inboxes lock").remove(aggregate)
    }

    /// The partitions they route.
    pub fn partitions(&self) -> &Partitions {
        &self.partitions
    }

    /// A command taken from an inbox was answered (see [`Partitions::ended`]).
    pub fn answered(&self, subject: &str) {
        if let Some(partition) = subject.rsplit('.').next().and_then(|p| p.parse().ok()) {
            self.partitions.ended(partition);
        }
    }
}

/// Why the server's mapping does not fit.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    /// Nothing came back on a mapped subject.
    #[error(
        "the NATS server does not map command subjects to partitions: --partition-routing needs the mapping \
         `weft.cmd.*.*` -> `weft.cmd.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.{{{{partition({0},1,2)}}}}` in the \
         account's configuration (see docs/cluster.md)"
    )]
    Missing(u32),
    /// The mapping uses another number of partitions, or another hash.
    #[error("the NATS server maps {subject} to partition {got}, this node expects {expected} of {count}")]
    Mismatch {
        /// The subject sent.
        subject: String,
        /// The partition the server put it in.
        got: String,
        /// The one this node computes.
        expected: u32,
        /// The node's number of partitions.
        count: u32,
    },
    /// The server could not be asked.
    #[error("checking the NATS server's command mapping: {0}")]
    Nats(String),
}

/// The aggregate token of the probes [`check_mapping`] sends (no service serves it).
const PROBE: &str = "weft-probe";

/// Sends a few probe subjects through the server and checks that each comes back mapped to the partition
/// [`super::partition`] computes for `count` partitions.
pub async fn check_mapping(client: &async_nats::Client, count: u32) -> Result<(), MappingError> {
    let nats = |e: &dyn std::fmt::Display| MappingError::Nats(e.to_string());
    let nonce = uuid::Uuid::now_v7();
    let mut mapped = client.subscribe(format!("{COMMANDS}.{PROBE}.>")).await.map_err(|e| nats(&e))?;
    client.flush().await.map_err(|e| nats(&e))?;
    for n in 0..4u128 {
        let id = uuid::Uuid::from_u128(nonce.as_u128() ^ n);
        let subject = format!("{COMMANDS}.{PROBE}.{id}");
        client.publish(subject.clone(), bytes::Bytes::new()).await.map_err(|e| nats(&e))?;
        let got = tokio::time::timeout(Duration::from_secs(2), mapped.next())
            .await
            .ok()
            .flatten()
            .ok_or(MappingError::Missing(count))?;
        let expected = super::partition(PROBE, &id.to_string(), count);
        let Some(got) = got.subject.as_str().strip_prefix(&format!("{subject}.")) else {
            return Err(MappingError::Missing(count));
        };
        if got != expected.to_string() {
            return Err(MappingError::Mismatch { subject, got: got.to_owned(), expected, count });
        }
    }
    Ok(())
}

/// Routes the commands of the partitions this node serves to `inboxes`, until aborted: see the module doc.
pub async fn run(client: async_nats::Client, inboxes: Inboxes, health: weft_events::Health) {
    let partitions = inboxes.partitions().clone();
    let mut serving = partitions.serving();
    let mut routes: BTreeMap<u32, tokio::sync::oneshot::Sender<()>> = BTreeMap::new();
    health.running();
    loop {
        let wanted = serving.borrow_and_update().clone();
        routes.retain(|partition, _| wanted.contains(partition));
        // A dropped sender tells a route to drain.
        for partition in wanted {
            if routes.contains_key(&partition) {
                continue;
            }
            let subject = format!("{COMMANDS}.*.*.{partition}");
            match client.queue_subscribe(subject, QUEUE_GROUP.to_owned()).await {
                Ok(subscriber) => {
                    let (stop, stopped) = tokio::sync::oneshot::channel();
                    partitions.began(partition);
                    tokio::spawn(route(client.clone(), subscriber, partition, inboxes.clone(), stopped));
                    routes.insert(partition, stop);
                }
                Err(error) => {
                    health.retrying(format!("subscribing to partition {partition}: {error}"));
                    break;
                }
            }
        }
        if routes.len() == serving.borrow().len() {
            health.running();
        }
        tokio::select! {
            changed = serving.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Hands the commands of one partition's subscription to their services until `stop` fires (or its sender
/// is dropped), then drains it.
async fn route(
    client: async_nats::Client,
    mut subscriber: async_nats::Subscriber,
    partition: u32,
    inboxes: Inboxes,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut draining = false;
    loop {
        let message = tokio::select! {
            message = subscriber.next() => message,
            _ = &mut stop, if !draining => {
                draining = true;
                // The server stops routing to us; what it routed already still comes, then the end.
                if subscriber.drain().await.is_err() {
                    break;
                }
                continue;
            }
        };
        let Some(message) = message else { break };
        forward(&client, message, partition, &inboxes).await;
    }
    inboxes.partitions().ended(partition);
}

/// Hands one command to its service, or answers it `invalid` when its subject names no aggregate, or a
/// partition other than its own.
async fn forward(client: &async_nats::Client, message: async_nats::Message, partition: u32, inboxes: &Inboxes) {
    let message = crate::bus::nats::from_nats(message);
    let Some(reply) = message.reply.clone() else {
        tracing::debug!(subject = %message.subject, "a command without a reply subject; dropped");
        return;
    };
    let tokens: Vec<&str> = message.subject.split('.').collect();
    let (aggregate, id) = (tokens.get(2).copied().unwrap_or(""), tokens.get(3).copied().unwrap_or(""));
    let count = inboxes.partitions().count();
    let refusal = match inboxes.senders.get(aggregate) {
        None => Some(format!("no aggregate is named {aggregate:?}")),
        Some(_) if super::partition(aggregate, id, count) != partition => Some(format!(
            "subject {} names partition {partition}, but {aggregate} {id} is in partition {}",
            message.subject,
            super::partition(aggregate, id, count)
        )),
        Some(sender) => {
            inboxes.partitions().began(partition);
            if sender.send(message.clone()).await.is_err() {
                inboxes.partitions().ended(partition);
            }
            None
        }
    };
    if let Some(refusal) = refusal {
        let json = message.is_json();
        let answer: protocol::Reply<()> = protocol::Reply::invalid(refusal);
        let mut headers = Headers::new();
        if json {
            headers.insert(CONTENT_TYPE.into(), JSON.into());
        }
        let payload = protocol::encode(&answer, json);
        let _ = client.publish_with_headers(reply, crate::bus::nats::to_nats(&headers), payload.into()).await;
    }
}
