//! The in-process bus: NATS subject semantics without a server, for the embedded default.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};

use super::{Bus, BusError, Message, Subscription, check_subject, matches};

/// Messages one subscriber may have waiting before it loses the next ones.
const SUBSCRIBER_CAPACITY: usize = 65_536;

/// Default largest payload: NATS's default.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

struct Subscriber {
    pattern: String,
    queue_group: Option<String>,
    sender: mpsc::Sender<Message>,
}

/// The subjects of requests' reply inboxes.
const INBOX_PREFIX: &str = "_INBOX.";

struct Inner {
    subscribers: RwLock<Vec<Subscriber>>,
    /// The reply inboxes of the requests waiting: each takes one reply and is gone when its request ends, so
    /// a reply is found by its subject and the subscribers stay as many as the node's long-lived ones.
    inboxes: Mutex<HashMap<String, oneshot::Sender<Message>>>,
    next_id: AtomicU64,
    /// Turns over queue-group members.
    turn: AtomicU64,
    max_payload: usize,
}

/// See the module doc. Cheap to clone; clones share subscriptions.
#[derive(Clone)]
pub struct MemoryBus {
    inner: Arc<Inner>,
}

impl Default for MemoryBus {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_PAYLOAD)
    }
}

impl MemoryBus {
    /// A bus refusing payloads over `max_payload` bytes.
    pub fn new(max_payload: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                subscribers: RwLock::new(Vec::new()),
                inboxes: Mutex::default(),
                next_id: AtomicU64::new(1),
                turn: AtomicU64::new(0),
                max_payload,
            }),
        }
    }

    /// Delivers a message; returns how many subscribers it reached.
    fn deliver(&self, message: Message) -> Result<usize, BusError> {
        check_subject(&message.subject, false)?;
        if message.payload.len() > self.inner.max_payload {
            return Err(BusError::TooLarge { size: message.payload.len(), limit: self.inner.max_payload });
        }
        let mut delivered = 0;
        if message.subject.starts_with(INBOX_PREFIX) {
            let inbox = self.inbox_table().remove(&message.subject);
            if let Some(inbox) = inbox {
                delivered += usize::from(inbox.send(message.clone()).is_ok());
            }
        }
        let subscribers = self.inner.subscribers.read().unwrap_or_else(|p| p.into_inner());
        let mut groups: Vec<(&str, Vec<&Subscriber>)> = Vec::new();
        let mut closed = false;
        for subscriber in subscribers.iter().filter(|s| matches(&s.pattern, &message.subject)) {
            if subscriber.sender.is_closed() {
                closed = true;
                continue;
            }
            match &subscriber.queue_group {
                None => delivered += usize::from(subscriber.sender.try_send(message.clone()).is_ok()),
                Some(group) => match groups.iter_mut().find(|(g, _)| g == group) {
                    Some((_, members)) => members.push(subscriber),
                    None => groups.push((group, vec![subscriber])),
                },
            }
        }
        for (_, members) in groups {
            let turn = self.inner.turn.fetch_add(1, Ordering::Relaxed) as usize;
            let member = members[turn % members.len()];
            delivered += usize::from(member.sender.try_send(message.clone()).is_ok());
        }
        drop(subscribers);
        if closed {
            self.inner.subscribers.write().unwrap_or_else(|p| p.into_inner()).retain(|s| !s.sender.is_closed());
        }
        Ok(delivered)
    }

    fn add(&self, pattern: &str, queue_group: Option<&str>) -> Result<mpsc::Receiver<Message>, BusError> {
        check_subject(pattern, true)?;
        let (sender, receiver) = mpsc::channel(SUBSCRIBER_CAPACITY);
        let subscriber = Subscriber { pattern: pattern.into(), queue_group: queue_group.map(Into::into), sender };
        let mut subscribers = self.inner.subscribers.write().unwrap_or_else(|p| p.into_inner());
        // Subscriptions dropped since, on subjects nothing was sent to after, leave now.
        subscribers.retain(|s| !s.sender.is_closed());
        subscribers.push(subscriber);
        Ok(receiver)
    }

    fn inbox_table(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Message>>> {
        self.inner.inboxes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many subscriptions and reply inboxes the bus holds, dropped ones not yet cleared included.
    pub fn held(&self) -> (usize, usize) {
        let subscribers = self.inner.subscribers.read().unwrap_or_else(|p| p.into_inner()).len();
        (subscribers, self.inbox_table().len())
    }
}

fn stream(receiver: mpsc::Receiver<Message>) -> Subscription {
    futures::stream::unfold(receiver, |mut r| async move { r.recv().await.map(|m| (m, r)) }).boxed()
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, message: Message) -> Result<(), BusError> {
        self.deliver(message).map(|_| ())
    }

    async fn request(&self, mut message: Message, timeout: Duration) -> Result<Message, BusError> {
        /// Takes the request's inbox away however the request ends (answered, timed out, dropped).
        struct Inbox<'a>(&'a MemoryBus, String);
        impl Drop for Inbox<'_> {
            fn drop(&mut self) {
                self.0.inbox_table().remove(&self.1);
            }
        }
        let inbox = format!("{INBOX_PREFIX}{}", self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let (sender, reply) = oneshot::channel();
        self.inbox_table().insert(inbox.clone(), sender);
        let _inbox = Inbox(self, inbox.clone());
        let subject = message.subject.clone();
        message.reply = Some(inbox);
        if self.deliver(message)? == 0 {
            return Err(BusError::NoResponders(subject));
        }
        let timed_out = || BusError::TimedOut { subject: subject.clone(), timeout_ms: timeout.as_millis() as u64 };
        tokio::time::timeout(timeout, reply).await.map_err(|_| timed_out())?.map_err(|_| timed_out())
    }

    async fn subscribe(&self, subject: &str, queue_group: Option<&str>) -> Result<Subscription, BusError> {
        Ok(stream(self.add(subject, queue_group)?))
    }

    async fn flush(&self) -> Result<(), BusError> {
        Ok(())
    }

    async fn confirm(&self) -> Result<u64, BusError> {
        Ok(0)
    }

    fn max_payload(&self) -> usize {
        self.inner.max_payload
    }
}
