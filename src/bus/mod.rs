//! The message bus: subjects, publish/subscribe with wildcards and queue groups, request/reply with headers.
//!
//! Two implementations pass one contract suite (`tests/bus.rs`): [`nats::NatsBus`] over a NATS server, and
//! [`memory::MemoryBus`], in process, with the same subject and wildcard semantics, for the embedded default.
//!
//! Subjects are NATS subjects: tokens separated by `.`, none empty, no whitespace. In a subscription `*`
//! matches one token and `>` (last token only) one or more. A queue group hands each message to one of its
//! members; plain subscribers each get every message. Delivery is at most once: a subscriber that does not
//! keep up loses messages (NATS calls it a slow consumer), so anything that must not be lost goes through the
//! event store, not the bus.

pub mod memory;
pub mod nats;
pub mod queries;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

/// Message headers: name to value.
pub type Headers = BTreeMap<String, String>;

/// The header carrying a command's id.
pub const COMMAND_ID: &str = "Weft-Command-Id";
/// The header carrying the correlation id of a flow.
pub const CORRELATION_ID: &str = "Weft-Correlation-Id";
/// The header naming who sends a command (`system:orchestrator`, `user:ann`). With authentication on, only
/// the node's own token ([`crate::auth::token::NodeToken`]) may set it; other callers' subject is the actor.
pub const ACTOR: &str = "Weft-Actor";
/// The header naming the tenant a command acts for; stamped on its events (`default` without it). With
/// authentication on, it picks one of the caller's tenants (the node's own token: any).
pub const TENANT: &str = "Weft-Tenant";
/// The header confining a command to the instances one owner owns (a `user`'s, sent for it by the node's
/// own components); taken only with the node's own token.
pub const OWNER: &str = "Weft-Owner";
/// The header carrying a bearer token: `Bearer <JWT>`.
pub const AUTHORIZATION: &str = "Authorization";
/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";
/// The content type header; `application/json` for JSON bodies, MessagePack otherwise.
pub const CONTENT_TYPE: &str = "Content-Type";
/// The JSON content type.
pub const JSON: &str = "application/json";

/// One message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Where it was published.
    pub subject: String,
    /// Where to answer, for a request.
    pub reply: Option<String>,
    /// Its headers.
    pub headers: Headers,
    /// Its body.
    pub payload: Bytes,
}

impl Message {
    /// A message with no headers and no reply subject.
    pub fn new(subject: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self { subject: subject.into(), reply: None, headers: Headers::new(), payload: payload.into() }
    }

    /// Whether the body is JSON (by its `Content-Type` header).
    pub fn is_json(&self) -> bool {
        self.headers.get(CONTENT_TYPE).is_some_and(|t| t.trim().starts_with(JSON))
    }
}

/// Why a bus operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// Nobody subscribes to the request's subject.
    #[error("no one answers on {0}")]
    NoResponders(String),
    /// No answer in time.
    #[error("no answer on {subject} within {timeout_ms} ms")]
    TimedOut {
        /// The subject.
        subject: String,
        /// The time-out.
        timeout_ms: u64,
    },
    /// A subject breaks the rules.
    #[error("invalid subject {subject:?}: {reason}")]
    InvalidSubject {
        /// The subject.
        subject: String,
        /// Which rule.
        reason: &'static str,
    },
    /// A message is over the bus's payload limit.
    #[error("a message of {size} bytes is over the bus limit of {limit}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The connection is down or closed.
    #[error("the bus is unavailable: {0}")]
    Unavailable(String),
}

/// Messages arriving on a subscription; dropping it unsubscribes.
pub type Subscription = futures::stream::BoxStream<'static, Message>;

/// See the module doc.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes a message (to its `reply` subject too, when answering a request).
    async fn publish(&self, message: Message) -> Result<(), BusError>;

    /// Publishes a request and waits for the first answer.
    async fn request(&self, message: Message, timeout: Duration) -> Result<Message, BusError>;

    /// Subscribes to `subject` (wildcards allowed), in `queue_group` if given.
    async fn subscribe(&self, subject: &str, queue_group: Option<&str>) -> Result<Subscription, BusError>;

    /// Waits until everything published so far has left this process.
    async fn flush(&self) -> Result<(), BusError>;

    /// Waits until the server has taken everything this process published before the call (a round trip on
    /// the connection that carried it), and answers the connection's epoch: a number that changes whenever
    /// the connection is made anew. What was published under another epoch than the one answered may have
    /// died with a connection: see [`crate::publisher`]. The in-process bus answers at once, always 0.
    async fn confirm(&self) -> Result<u64, BusError>;

    /// The largest payload a message may have.
    fn max_payload(&self) -> usize;
}

/// Sends a command request as [`Bus::request`] does, sending it again while nobody answers its subject, until
/// `timeout` in all: nodes routing commands by partition hand a partition over, or take over a dead node's,
/// in a few seconds during which its subjects have no responder. `NoResponders` means no node took the
/// request, so sending it again (with the same command id) runs it at most once.
pub async fn request_command(bus: &dyn Bus, message: Message, timeout: Duration) -> Result<Message, BusError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(25);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match bus.request(message.clone(), left).await {
            Err(BusError::NoResponders(_)) if tokio::time::Instant::now() + pause < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(250));
            }
            other => return other,
        }
    }
}

/// Checks a subject to publish to (`wildcards` false) or subscribe to (`wildcards` true).
pub fn check_subject(subject: &str, wildcards: bool) -> Result<(), BusError> {
    let invalid = |reason| Err(BusError::InvalidSubject { subject: subject.into(), reason });
    if subject.is_empty() {
        return invalid("it is empty");
    }
    if subject.len() > 1024 {
        return invalid("it is over 1024 bytes");
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return invalid("a token is empty");
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return invalid("it holds whitespace or control characters");
        }
        let wildcard = *token == "*" || *token == ">";
        if wildcard && !wildcards {
            return invalid("wildcards are for subscriptions only");
        }
        if *token == ">" && i + 1 != tokens.len() {
            return invalid("`>` may only be the last token");
        }
        if !wildcard && (token.contains('*') || token.contains('>')) {
            return invalid("a wildcard must be a whole token");
        }
    }
    Ok(())
}

/// Whether `subject` matches the subscription `pattern`.
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for token in pattern.split('.') {
        match token {
            ">" => return subject_tokens.next().is_some(),
            "*" => {
                if subject_tokens.next().is_none() {
                    return false;
                }
            }
            literal => {
                if subject_tokens.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    subject_tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_in_nats() {
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a.b.c"));
        assert!(!matches("a.b.c", "a.b"));
        assert!(matches("a.*", "a.b"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(matches("a.*.c", "a.b.c"));
        assert!(matches("a.>", "a.b"));
        assert!(matches("a.>", "a.b.c.d"));
        assert!(!matches("a.>", "a"));
        assert!(matches(">", "a"));
        assert!(matches("*.>", "a.b"));
        assert!(!matches("*.>", "a"));
    }

    #[test]
    fn subjects_are_checked() {
        assert!(check_subject("weft.cmd.job.1", false).is_ok());
        assert!(check_subject("weft.cmd.*.>", true).is_ok());
        for (subject, wildcards) in [
            ("", false),
            ("a..b", false),
            (".a", false),
            ("a.", false),
            ("a b", false),
            ("a.*", false),
            ("a.>.b", true),
            ("a.b*", true),
            ("a.\n", true),
        ] {
            assert!(
                matches!(check_subject(subject, wildcards), Err(BusError::InvalidSubject { .. })),
                "{subject:?} passed"
            );
        }
    }
}
