//! Group commit: appends to different streams that wait together go to the server as one atomic batch when
//! there are enough of them, so the server stores (and, with `sync_interval: always`, fsyncs) them once instead
//! of once each.
//!
//! One task per store takes the publishes of its appends from a queue and keeps a bounded load of them out at
//! once ([`MAX_LOAD`]: eight appends on their own, or two batches). A publish that comes while there is room
//! goes out at once, as before; those that come while the task is full wait. What waited goes next: as one
//! batch of at most [`MAX_GROUP_MESSAGES`] messages when it holds at least [`BATCH_FROM`] messages (a
//! replicated stream: two), each append's first message carrying its own expected-subject check (the server
//! checks each one, and stores all or nothing); below that, each append on its own, all of them out at once.
//! Two appends to one stream never share a batch: the second waits for the next.
//!
//! Why a floor: a single-server stream on file storage stages every atomic batch in a store of its own on disk
//! (nats-server's `newBatchStore`: a folder, a metadata file written and fsynced, removed after the commit),
//! which costs the server some milliseconds of its stream loop whatever the batch's size, while a message on
//! its own costs one fsync. Profiled while `weft bench jobs` ran on NATS, where a few appends wait at a time,
//! staging was 38 - 47% of the server's samples. A replicated stream stages a batch in memory, so there any two
//! go together (not measured: no cluster runs in the benchmarks). See `docs/jetstream.md`.
//!
//! The batch's acknowledgement names its last sequence and count; an atomic batch is stored contiguously in
//! order, so each append's sequences follow from its place. When the batch is refused (one append's check
//! failed, a message id was seen before) or its acknowledgement is lost, nothing of it is known to be stored,
//! and each append is published again on its own, with the same message ids: each gets its own answer, a
//! conflict its own conflict, and a copy the batch did store is a duplicate to the server.

use std::collections::HashSet;
use std::sync::{Arc, Weak};

use tokio::sync::{mpsc, oneshot};
use weft_events::StreamName;

use super::append::Message;
use super::wire::PublishError;
use super::{Inner, JetStreamStore};

/// Most messages in one grouped batch (the server takes up to 1,000 in an atomic batch by default).
pub(super) const MAX_GROUP_MESSAGES: usize = 256;

/// How much the task has out at once, unacknowledged: an append on its own weighs 1, a batch [`BATCH_WEIGHT`].
/// Below it, an append goes out as soon as it comes (as without the task); at it, the appends that come
/// meanwhile wait and go together next. Appends that waited together but are too few for a batch go out each
/// on its own, all at once, and may take the load past it.
const MAX_LOAD: usize = 8;

/// What a batch in flight weighs: at most two are out at once. Fewer batches out make larger ones under a heavy
/// load (in `weft bench nats`, `command-jetstream-256` ran at 11,389 commands/s with two out, 6,681 with
/// eight), while eight appends on their own keep the server busy under a light one.
const BATCH_WEIGHT: usize = 4;

/// Fewest messages of waiting appends that go as one atomic batch on a single-server stream; fewer go each on
/// its own, at once (see the module doc for why). A replicated stream batches any two.
pub(super) const BATCH_FROM: usize = 12;

/// Publishes that may wait for the group task before appenders wait too.
const QUEUE: usize = 4_096;

/// One append's publish, waiting for the task.
pub(super) struct Publish {
    stream: StreamName,
    messages: Vec<Message>,
    reply: oneshot::Sender<Result<u64, PublishError>>,
}

impl JetStreamStore {
    /// Publishes one append's `messages` as [`Self::publish`] does, through the group task (started by the
    /// first append): alone, or in one atomic batch with the appends waiting with it when they are enough.
    pub(super) async fn publish_grouped(&self, stream: &StreamName, messages: &[Message]) -> Result<u64, PublishError> {
        let queue = self.inner.group.get_or_init(|| {
            let (queue, publishes) = mpsc::channel(QUEUE);
            tokio::spawn(run(Arc::downgrade(&self.inner), publishes));
            queue
        });
        let (reply, answer) = oneshot::channel();
        let publish = Publish { stream: stream.clone(), messages: messages.to_vec(), reply };
        if queue.send(publish).await.is_err() {
            // The task is gone (the runtime that started it has ended): publish directly.
            return self.publish(messages).await;
        }
        answer.await.unwrap_or_else(|_| Err(PublishError::Ambiguous("the group commit task stopped".into())))
    }

    /// Publishes `group` (two or more appends to different streams) as one atomic batch and answers each.
    async fn publish_group(&self, group: Vec<Publish>) {
        let appends: Vec<_> = group.iter().map(|p| p.messages.as_slice()).collect();
        match self.publish_appends(&appends).await {
            Ok(last) => {
                let total: u64 = group.iter().map(|p| p.messages.len() as u64).sum();
                let mut end = last + 1 - total;
                for publish in group {
                    end += publish.messages.len() as u64;
                    let _ = publish.reply.send(Ok(end - 1));
                }
            }
            Err(error) => {
                tracing::debug!(
                    appends = group.len(),
                    ?error,
                    "a grouped batch was not stored; publishing each append alone"
                );
                let alone = group.iter().map(|p| self.publish(&p.messages));
                let answers = futures::future::join_all(alone).await;
                for (publish, answer) in group.into_iter().zip(answers) {
                    let _ = publish.reply.send(answer);
                }
            }
        }
    }
}

/// The group task: see the module doc. Ends when the store is dropped.
async fn run(weak: Weak<Inner>, mut publishes: mpsc::Receiver<Publish>) {
    use futures::future::BoxFuture;
    use futures::{FutureExt as _, StreamExt as _};
    // Each send in flight yields its weight when it ends; `load` is their sum.
    let mut in_flight = futures::stream::FuturesUnordered::<BoxFuture<'static, usize>>::new();
    let mut load = 0;
    let mut carried: Option<Publish> = None;
    loop {
        if load >= MAX_LOAD {
            load -= in_flight.next().await.unwrap_or(load);
            continue;
        }
        let first = match carried.take() {
            Some(publish) => publish,
            None if in_flight.is_empty() => match publishes.recv().await {
                Some(publish) => publish,
                None => return,
            },
            None => tokio::select! {
                done = in_flight.next() => {
                    load -= done.unwrap_or(load);
                    continue;
                }
                publish = publishes.recv() => match publish {
                    Some(publish) => publish,
                    None => return,
                },
            },
        };
        let mut size = first.messages.len();
        let mut streams = HashSet::from([first.stream.clone()]);
        let mut group = vec![first];
        while size < MAX_GROUP_MESSAGES {
            let Ok(next) = publishes.try_recv() else { break };
            if streams.contains(&next.stream) || size + next.messages.len() > MAX_GROUP_MESSAGES {
                carried = Some(next);
                break;
            }
            size += next.messages.len();
            streams.insert(next.stream.clone());
            group.push(next);
        }
        let Some(inner) = weak.upgrade() else { return };
        let store = JetStreamStore { inner };
        if group.len() > 1 && size >= store.batch_from() {
            load += BATCH_WEIGHT;
            in_flight.push(
                async move {
                    store.publish_group(group).await;
                    BATCH_WEIGHT
                }
                .boxed(),
            );
            continue;
        }
        for publish in group {
            let store = store.clone();
            load += 1;
            in_flight.push(
                async move {
                    let answer = store.publish(&publish.messages).await;
                    let _ = publish.reply.send(answer);
                    1
                }
                .boxed(),
            );
        }
    }
}
