//! Event publishing: every committed event goes out on `weft.evt.<tenant>.<aggregate>.<id>.<name>` (see
//! [`crate::protocol::event_subject`]), in log order (but for users' and API keys' events, which are not
//! published), as a [`crate::protocol::WireEvent`] in readable
//! MessagePack with header `Nats-Msg-Id` set to the event id.
//!
//! It is a checkpointed process like the process managers: after a crash it publishes again from its last
//! checkpoint, so delivery is at least once per position, and subscribers dedupe by the event id. An event
//! too large for the bus goes out without its payload (header [`PAYLOAD_OMITTED`]). A bus that
//! is down holds it at the event it could not publish; nothing is skipped.
//!
//! Nodes that share the work by partition (`--partition-routing` over a store filed by partition) publish
//! without a leader: each runs a publisher per partition it holds, over that partition's events, with its own
//! checkpoint (`process-publisher-<partition>`), and the holder of the process managers' lease runs one more
//! for the few streams in no partition (tenants' erasures; [`Publisher::rest_of`]), checkpointed as
//! `process-publisher-rest`. Each instance's events then go out in log order, as each partition's do; events
//! of different partitions may overtake each other. A publisher with no checkpoint of its own starts where the
//! whole log's publisher had got to (`process-publisher`), so turning routing on publishes nothing twice and
//! skips nothing; turning it off again resumes the whole log's publisher from there, publishing again what
//! went out while routing (subscribers dedupe by event id).
//!
//! A checkpoint covers only what the server took. A NATS publish returns once the message is in the
//! client's buffer, and a connection that dies loses what its buffer and socket held; the client reconnects
//! and goes on, so nothing says so. Before each checkpoint the publisher therefore has the bus confirm
//! ([`Bus::confirm`]): a round trip to the server on the same connection, and the connection's epoch. If that
//! fails, or the epoch is not the one the publishes since the last checkpoint went out under, the checkpoint is
//! not saved and the publisher starts again from the last one: those events go out again.

use std::cell::Cell;
use std::sync::Arc;

use weft_actors::process::{Process, Retry, checkpoint_name};
use weft_events::{Envelope, Partition, StreamName, partition};

use crate::bus::{Bus, Headers, Message};
use crate::protocol::{self, WireEvent};

/// The header carrying the event id, which JetStream and subscribers dedupe by.
pub const MESSAGE_ID: &str = "Nats-Msg-Id";

/// The header set, to the payload's size, on an event published without its payload because the whole would
/// be over the bus's message limit.
pub const PAYLOAD_OMITTED: &str = "Weft-Payload-Omitted";

/// Whether `event` is a user's or an API key's: those stay in the log (they hold hashes of secrets, and who
/// may do what is no subscriber's business).
fn is_identity(event: &Envelope) -> bool {
    use weft_events::domain::identity::{apikey, user};
    let kind = event.stream.as_str().split_once('-').map_or("", |(kind, _)| kind);
    kind == user::AGGREGATE || kind == apikey::AGGREGATE
}

/// See the module doc.
pub struct Publisher {
    bus: Arc<dyn Bus>,
    /// The connection's epoch the publishes since the last checkpoint went out under.
    epoch: Cell<Option<u64>>,
    /// With a store of this many partitions, whose publishers put out the rest: publish only the events of
    /// streams in no partition.
    rest_of: Option<u32>,
}

impl Publisher {
    /// A publisher onto `bus`, of the events it reads: the whole log's, or a partition's.
    pub fn new(bus: Arc<dyn Bus>) -> Self {
        Self { bus, epoch: Cell::new(None), rest_of: None }
    }

    /// A publisher onto `bus` of the events of streams in none of the `count` partitions, beside the
    /// partitions' publishers: it reads the whole log and passes the partitions' events over.
    pub fn rest_of(bus: Arc<dyn Bus>, count: u32) -> Self {
        Self { rest_of: Some(count), ..Self::new(bus) }
    }

    /// Whether `event` is another publisher's to put out.
    fn elsewhere(&self, event: &Envelope) -> bool {
        self.rest_of.is_some_and(|count| partition::of_stream(event.stream.as_str(), count).is_some())
    }
}

#[async_trait::async_trait(?Send)]
impl Process for Publisher {
    const NAME: &'static str = "publisher";
    type State = ();

    /// Publishing an event is no step of its flow: a span per event of the log would be most of a trace.
    fn traced(&self, _event: &Envelope) -> bool {
        false
    }

    async fn resume(&self, _state: &mut ()) -> Result<(), Retry> {
        let epoch = self.bus.confirm().await.map_err(|e| Retry(format!("the bus: {e}")))?;
        self.epoch.set(Some(epoch));
        Ok(())
    }

    async fn confirm(&self) -> Result<(), String> {
        let epoch = self.bus.confirm().await.map_err(|e| e.to_string())?;
        let before = self.epoch.replace(Some(epoch));
        if before.is_some_and(|before| before != epoch) {
            return Err("the bus connection was made anew since the last checkpoint: what it held may be lost".into());
        }
        Ok(())
    }

    fn checkpoint(&self, partition: Option<Partition>) -> StreamName {
        match (self.rest_of, partition) {
            (Some(_), _) => checkpoint_name("publisher-rest"),
            (None, partition) => weft_actors::process::checkpoint_name_in(Self::NAME, partition),
        }
    }

    /// A partition's publisher, or that of the rest, takes over from the whole log's.
    fn seed(&self, partition: Option<Partition>) -> Option<StreamName> {
        (partition.is_some() || self.rest_of.is_some()).then(|| checkpoint_name(Self::NAME))
    }

    async fn handle(&self, _state: &mut (), event: &Envelope) -> Result<(), Retry> {
        if is_identity(event) || self.elsewhere(event) {
            return Ok(());
        }
        let headers = Headers::from([(MESSAGE_ID.to_owned(), event.event_id.to_string())]);
        let mut wire = WireEvent::from(event);
        let mut message = Message {
            subject: protocol::event_subject(event),
            reply: None,
            headers,
            payload: protocol::encode(&wire, false).into(),
        };
        if message.payload.len() + 512 > self.bus.max_payload() {
            // Too large for the bus: the envelope goes out without its payload, which readers fetch from the
            // store by position.
            message.headers.insert(PAYLOAD_OMITTED.into(), wire.payload.len().to_string());
            wire.payload.clear();
            message.payload = protocol::encode(&wire, false).into();
        }
        self.bus.publish(message).await.map_err(|e| Retry(format!("publishing position {}: {e}", event.position)))
    }
}
