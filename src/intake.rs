//! Command intake: one bus service per aggregate type, in queue group `weft` so that several nodes share
//! the load. Each decodes and checks a command (see [`crate::protocol`]), runs it on the local actor host and
//! replies. Bad input gets an `invalid` reply and never reaches an aggregate; nothing in here panics on input.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use tokio::sync::Semaphore;
use weft_actors::Aggregate;
use weft_actors::host::{Execute, Host, Metadata};
use weft_actors::process::Hosts;
use weft_events::StreamName;
use weft_events::domain::ids::Uuid;
use weft_events::envelope::check_label;

use crate::bus::trace::TraceParent;
use crate::bus::{
    ACTOR, Bus, BusError, CONTENT_TYPE, CORRELATION_ID, Headers, JSON, Message, Subscription, TENANT, TRACEPARENT,
};
use crate::protocol::{self, BodyLimits, Reply};

/// Options of the intake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntakeOptions {
    /// Limits on command bodies.
    pub limits: BodyLimits,
    /// The queue group the services join.
    pub queue_group: String,
    /// Most commands being handled at once on this node; past it the node stops taking commands off the bus
    /// until some finish (NATS then holds them, or drops them for a slow consumer and the clients retry).
    pub max_in_flight: usize,
}

impl Default for IntakeOptions {
    fn default() -> Self {
        Self { limits: BodyLimits::default(), queue_group: protocol::QUEUE_GROUP.into(), max_in_flight: 4096 }
    }
}

/// The running services; dropping it unsubscribes them (commands being handled still get their replies).
pub struct Intake {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    handled: Arc<AtomicU64>,
}

impl Intake {
    /// Subscribes a service per aggregate type and serves commands until stopped. Must be called on an actix
    /// system: the hosts start actors on it.
    pub async fn start(bus: Arc<dyn Bus>, hosts: Hosts, options: IntakeOptions) -> Result<Self, BusError> {
        let handled = Arc::new(AtomicU64::new(0));
        let slots = Arc::new(Semaphore::new(options.max_in_flight.max(1)));
        let shared = Shared { handled: handled.clone(), slots };
        let tasks = vec![
            serve(bus.clone(), hosts.document, &options, shared.clone()).await?,
            serve(bus.clone(), hosts.workflow, &options, shared.clone()).await?,
            serve(bus.clone(), hosts.job, &options, shared.clone()).await?,
            serve(bus.clone(), hosts.agent, &options, shared.clone()).await?,
            serve(bus.clone(), hosts.schedule, &options, shared).await?,
        ];
        bus.flush().await?;
        Ok(Self { tasks, handled })
    }

    /// Commands this node has taken off the bus so far.
    pub fn handled(&self) -> u64 {
        self.handled.load(Ordering::Relaxed)
    }
}

impl Drop for Intake {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What the services of one node share.
#[derive(Clone)]
struct Shared {
    handled: Arc<AtomicU64>,
    slots: Arc<Semaphore>,
}

async fn serve<A: Aggregate>(
    bus: Arc<dyn Bus>,
    host: Host<A>,
    options: &IntakeOptions,
    shared: Shared,
) -> Result<tokio::task::JoinHandle<()>, BusError> {
    let subject = format!("{}.{}.*", protocol::COMMANDS, A::KIND);
    let subscription: Subscription = bus.subscribe(&subject, Some(&options.queue_group)).await?;
    let limits = options.limits;
    Ok(actix_rt::spawn(async move {
        let mut subscription = subscription;
        while let Some(message) = subscription.next().await {
            shared.handled.fetch_add(1, Ordering::Relaxed);
            let Ok(slot) = shared.slots.clone().acquire_owned().await else { return };
            let (bus, host) = (bus.clone(), host.clone());
            actix_rt::spawn(async move {
                handle(message, bus, host, limits).await;
                drop(slot);
            });
        }
    }))
}

/// Handles one command in a `command` span joined to the caller's trace when it sent a valid `traceparent`.
async fn handle<A: Aggregate>(message: Message, bus: Arc<dyn Bus>, host: Host<A>, limits: BodyLimits) {
    use tracing::Instrument as _;
    let span = tracing::debug_span!(
        "command",
        subject = %message.subject,
        trace_id = tracing::field::Empty,
        parent_id = tracing::field::Empty
    );
    if let Some(parent) = message.headers.get(TRACEPARENT).and_then(|t| TraceParent::parse(t)) {
        span.record("trace_id", tracing::field::display(parent.trace_id_hex()));
        span.record("parent_id", tracing::field::display(parent.parent_id_hex()));
    }
    handle_in_span(message, bus, host, limits).instrument(span).await
}

async fn handle_in_span<A: Aggregate>(message: Message, bus: Arc<dyn Bus>, host: Host<A>, limits: BodyLimits) {
    let Some(reply_to) = message.reply.clone() else {
        tracing::debug!(subject = %message.subject, "a command without a reply subject; dropped");
        return;
    };
    let json = message.is_json();
    let reply: Reply<A::Rejection> = match decode(&message, json, limits) {
        Err(why) => {
            tracing::debug!(subject = %message.subject, %why, "an invalid command");
            Reply::invalid(why)
        }
        Ok((stream, execute)) => Reply::from_host(host.execute(&stream, execute).await),
    };
    let mut headers = Headers::new();
    if json {
        headers.insert(CONTENT_TYPE.into(), JSON.into());
    }
    let answer = Message { subject: reply_to, reply: None, headers, payload: protocol::encode(&reply, json).into() };
    if let Err(error) = bus.publish(answer).await {
        tracing::warn!(subject = %message.subject, %error, "replying to a command failed");
    }
}

/// Decodes a command and its headers; the error is the message of an `invalid` reply.
fn decode<A: Aggregate>(message: &Message, json: bool, limits: BodyLimits) -> Result<(StreamName, Execute<A>), String> {
    let decoded = protocol::decode_command::<A>(&message.subject, &message.payload, json, limits)?;
    let correlation_id = match message.headers.get(CORRELATION_ID) {
        Some(c) => Some(Uuid::parse_str(c).map_err(|_| format!("header {CORRELATION_ID} {c:?} is not a UUID"))?),
        None => None,
    };
    let actor = match message.headers.get(ACTOR) {
        Some(actor) => {
            check_label("actor", actor).map_err(|e| format!("header {ACTOR}: {e}"))?;
            Some(actor.clone())
        }
        None => None,
    };
    let tenant = match message.headers.get(TENANT) {
        Some(tenant) => {
            check_label("tenant", tenant).map_err(|e| format!("header {TENANT}: {e}"))?;
            Some(tenant.clone())
        }
        None => None,
    };
    let metadata = Metadata { tenant, actor, correlation_id };
    let execute = Execute {
        command_id: decoded.command_id,
        command: decoded.command,
        expected_version: decoded.expected_version,
        metadata,
    };
    Ok((decoded.stream, execute))
}
