//! The bus over a NATS server (`async-nats`).

use std::time::Duration;

use async_nats::header::HeaderMap;
use async_nats::{PublishErrorKind, RequestErrorKind};
use async_trait::async_trait;
use futures::StreamExt;

use super::{Bus, BusError, Headers, Message, Subscription, check_subject};

/// How long [`Bus::confirm`] waits for the server.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// See the module doc. Cheap to clone.
#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
}

impl NatsBus {
    /// A bus over a connected client.
    pub fn new(client: async_nats::Client) -> Self {
        Self { client }
    }

    fn check_size(&self, message: &Message) -> Result<(), BusError> {
        let limit = self.max_payload();
        let size = message.payload.len() + message.headers.iter().map(|(k, v)| k.len() + v.len() + 4).sum::<usize>();
        if size > limit {
            return Err(BusError::TooLarge { size, limit });
        }
        Ok(())
    }
}

pub(crate) fn to_nats(headers: &Headers) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.insert(name.as_str(), value.as_str());
    }
    map
}

pub(crate) fn from_nats(message: async_nats::Message) -> Message {
    let headers = message
        .headers
        .iter()
        .flat_map(|h| h.iter())
        .filter_map(|(name, values)| {
            let value: &str = values.first()?.as_ref();
            Some((name.to_string(), value.to_owned()))
        })
        .collect();
    Message {
        subject: message.subject.to_string(),
        reply: message.reply.map(|r| r.to_string()),
        headers,
        payload: message.payload,
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, message: Message) -> Result<(), BusError> {
        check_subject(&message.subject, false)?;
        self.check_size(&message)?;
        let Message { subject, reply, headers, payload } = message;
        let result = match reply {
            Some(reply) => self.client.publish_with_reply_and_headers(subject, reply, to_nats(&headers), payload).await,
            None => self.client.publish_with_headers(subject, to_nats(&headers), payload).await,
        };
        result.map_err(|e| match e.kind() {
            PublishErrorKind::MaxPayloadExceeded => BusError::TooLarge { size: 0, limit: self.max_payload() },
            _ => BusError::Unavailable(e.to_string()),
        })
    }

    async fn request(&self, message: Message, timeout: Duration) -> Result<Message, BusError> {
        check_subject(&message.subject, false)?;
        self.check_size(&message)?;
        let subject = message.subject.clone();
        let request = async_nats::Request::new()
            .headers(to_nats(&message.headers))
            .payload(message.payload)
            .timeout(Some(timeout));
        match self.client.send_request(message.subject, request).await {
            Ok(reply) => Ok(from_nats(reply)),
            Err(e) => Err(match e.kind() {
                RequestErrorKind::TimedOut => BusError::TimedOut { subject, timeout_ms: timeout.as_millis() as u64 },
                RequestErrorKind::NoResponders => BusError::NoResponders(subject),
                RequestErrorKind::MaxPayloadExceeded => BusError::TooLarge { size: 0, limit: self.max_payload() },
                RequestErrorKind::InvalidSubject => {
                    BusError::InvalidSubject { subject, reason: "refused by the client" }
                }
                RequestErrorKind::Other => BusError::Unavailable(e.to_string()),
            }),
        }
    }

    async fn subscribe(&self, subject: &str, queue_group: Option<&str>) -> Result<Subscription, BusError> {
        check_subject(subject, true)?;
        let subscriber = match queue_group {
            Some(group) => self.client.queue_subscribe(subject.to_owned(), group.to_owned()).await,
            None => self.client.subscribe(subject.to_owned()).await,
        }
        .map_err(|e| BusError::Unavailable(e.to_string()))?;
        Ok(subscriber.map(from_nats).boxed())
    }

    async fn flush(&self) -> Result<(), BusError> {
        self.client.flush().await.map_err(|e| BusError::Unavailable(e.to_string()))
    }

    /// A message to an inbox of its own, on the same connection: the server handles a connection's messages
    /// in order, so when it comes back, everything published before it was taken. (`flush` only writes
    /// the client's buffer to the socket, which a dying connection may lose.)
    async fn confirm(&self) -> Result<u64, BusError> {
        let unavailable = |e: &dyn std::fmt::Display| BusError::Unavailable(format!("confirming publishes: {e}"));
        let epoch =
            |client: &async_nats::Client| client.statistics().connects.load(std::sync::atomic::Ordering::SeqCst);
        let before = epoch(&self.client);
        let inbox = self.client.new_inbox();
        let mut echo = self.client.subscribe(inbox.clone()).await.map_err(|e| unavailable(&e))?;
        self.client.publish(inbox, bytes::Bytes::new()).await.map_err(|e| unavailable(&e))?;
        self.client.flush().await.map_err(|e| unavailable(&e))?;
        match tokio::time::timeout(CONFIRM_TIMEOUT, echo.next()).await {
            Ok(Some(_)) => {}
            Ok(None) => return Err(unavailable(&"the connection closed")),
            Err(_) => return Err(unavailable(&format!("no answer within {CONFIRM_TIMEOUT:?}"))),
        }
        let after = epoch(&self.client);
        if after != before {
            return Err(unavailable(&"the connection was made anew meanwhile"));
        }
        Ok(after)
    }

    fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }
}
